/* The kernel has no C library headers: <stdbool.h> for include/iommu_engine.h. */
#include <linux/types.h>
