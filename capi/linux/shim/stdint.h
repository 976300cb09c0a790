/* The kernel has no C library headers: <stdint.h> for include/iommu_engine.h. */
#include <linux/types.h>
