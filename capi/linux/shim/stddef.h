/* The kernel has no C library headers: <stddef.h> for include/iommu_engine.h. */
#include <linux/types.h>
