//! Scalable-mode translation (§3.4.3, §9.2, §9.4-§9.6).
