// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * ie_edu: an out-of-tree Linux module that drives QEMU q35's intel-iommu through iommu-engine's C
 * ABI (include/iommu_engine.h, libiommu_engine.a linked in as rust.o) and lets QEMU's `edu`
 * device DMA through the translations it builds.
 *
 * Boot with `intel_iommu=off intremap=off`: Linux then leaves the remapping unit alone and this
 * module owns it. The unit is found from the ACPI DMAR table (the DRHD whose scope covers the
 * device, found by the crate's DMAR parser through ie_dmar_unit_for), the device is bound as
 * a pci_driver, and the probe runs the seed flow of
 * tests/c/seed_flow.c on real (emulated) hardware. Each step prints one line
 *     ie_edu: step <name>: ok [detail]      or      ie_edu: step <name>: FAIL <detail>
 * and the probe ends with
 *     ie_edu: result: <n> passed, <m> failed
 * which tests/linux_module.rs reads from the kernel log.
 *
 * Module parameters say what the runner asked QEMU for; the module checks the unit's CAP/ECAP
 * against them, so a row that booted the wrong configuration fails instead of passing vacuously.
 *
 * The header's rules for callers (IeEnv): the library's locks are plain spin locks that disable
 * neither preemption nor interrupts, and it calls this module's IeEnv functions with them held.
 * So every call into the library runs with preemption disabled (IE(), below: a holder preempted
 * would leave another CPU spinning on its lock), and the callbacks never sleep (GFP_ATOMIC) nor
 * call back into the library.
 */
#include <linux/acpi.h>
#include <linux/delay.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <asm/cacheflush.h>
#include <asm/set_memory.h>

#include "iommu_engine.h"

static bool scalable;
module_param(scalable, bool, 0444);
MODULE_PARM_DESC(scalable, "run the unit in scalable mode (QEMU x-scalable-mode=on)");
static bool expect_snoop;
module_param(expect_snoop, bool, 0444);
MODULE_PARM_DESC(expect_snoop, "the unit reports ECAP.SC (QEMU snoop-control=on)");
static bool expect_cm;
module_param(expect_cm, bool, 0444);
MODULE_PARM_DESC(expect_cm, "the unit reports CAP.CM (QEMU caching-mode=on)");

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
/* edu's DMA engine (QEMU docs/specs/edu.rst). */
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_DMA_RUN 0x1
#define EDU_DMA_TO_RAM 0x2
#define EDU_BUFFER 0x40000
/* VT-d registers the module reads itself to check the row's configuration (VT-d 4.1 §11.4). */
#define VTD_CAP 0x08
#define VTD_ECAP 0x10
#define VTD_CAP_CM (1ULL << 7)
#define VTD_ECAP_C (1ULL << 0)
#define VTD_ECAP_SC (1ULL << 7)
#define VTD_ECAP_SMTS (1ULL << 43)

/* An IOVA below edu's 28-bit DMA mask, and the transfer length. */
#define IOVA 0x00400000ULL
#define LEN 64
#define PAT_OFF 0x800

static int passed, failed;

/*
 * A call into the library with preemption disabled: its spin locks do not disable it
 * themselves (the header's Threads rules).
 */
#define IE(call)                          \
	({                                \
		int32_t __ie_st;          \
		preempt_disable();        \
		__ie_st = (call);         \
		preempt_enable();         \
		__ie_st;                  \
	})

#define STEP(ok, name, fmt, ...)                                                         \
	do {                                                                             \
		if (ok) {                                                                \
			passed++;                                                        \
			pr_info("ie_edu: step %s: ok " fmt "\n", name, ##__VA_ARGS__);   \
		} else {                                                                 \
			failed++;                                                        \
			pr_info("ie_edu: step %s: FAIL " fmt "\n", name, ##__VA_ARGS__); \
		}                                                                        \
	} while (0)

/*
 * IeEnv over the page allocator. Every live allocation is recorded so that phys_to_virt can
 * answer NULL outside the crate's pages (IeEnv's contract) and the teardown can check that every
 * page came back. The crate calls alloc_page with its own spin locks held, here with preemption
 * disabled (IE()): it must not sleep, so GFP_ATOMIC, never GFP_KERNEL.
 */
#define MAX_PAGES 256
static struct {
	u64 pa;
	u32 size_log2;
} live[MAX_PAGES];
static DEFINE_SPINLOCK(live_lock);
static unsigned long allocs, frees, syncs;

static void *env_alloc_page(void *ctx, u32 size_log2, u64 *pa)
{
	struct page *page;
	unsigned long flags;
	int i;

	if (size_log2 < PAGE_SHIFT || size_log2 > 20)
		return NULL;
	page = alloc_pages(GFP_ATOMIC | __GFP_ZERO, size_log2 - PAGE_SHIFT);
	if (!page)
		return NULL;
	spin_lock_irqsave(&live_lock, flags);
	for (i = 0; i < MAX_PAGES && live[i].size_log2; i++)
		;
	if (i < MAX_PAGES) {
		live[i].pa = page_to_phys(page);
		live[i].size_log2 = size_log2;
		allocs++;
	}
	spin_unlock_irqrestore(&live_lock, flags);
	if (i == MAX_PAGES) {
		__free_pages(page, size_log2 - PAGE_SHIFT);
		return NULL;
	}
	*pa = page_to_phys(page);
	return page_address(page);
}

static void env_free_page(void *ctx, void *va, u64 pa, u32 size_log2)
{
	unsigned long flags;
	int i;

	spin_lock_irqsave(&live_lock, flags);
	for (i = 0; i < MAX_PAGES; i++) {
		if (live[i].size_log2 == size_log2 && live[i].pa == pa) {
			live[i].size_log2 = 0;
			frees++;
			break;
		}
	}
	spin_unlock_irqrestore(&live_lock, flags);
	if (i == MAX_PAGES) {
		pr_err("ie_edu: free of a page never allocated: %#llx order %u\n", pa, size_log2);
		return;
	}
	__free_pages(virt_to_page(va), size_log2 - PAGE_SHIFT);
}

static void *env_phys_to_virt(void *ctx, u64 pa)
{
	unsigned long flags;
	bool found = false;
	int i;

	spin_lock_irqsave(&live_lock, flags);
	for (i = 0; i < MAX_PAGES && !found; i++)
		found = live[i].size_log2 && pa >= live[i].pa &&
			pa - live[i].pa < (1ULL << live[i].size_log2);
	spin_unlock_irqrestore(&live_lock, flags);
	return found ? phys_to_virt(pa) : NULL;
}

/* Called by the crate only when the walker does not snoop (ECAP.C = 0). */
static void env_sync_for_device(void *ctx, void *va, size_t len)
{
	syncs++;
	clflush_cache_range(va, len);
}

static void env_sync_for_cpu(void *ctx, void *va, size_t len)
{
	clflush_cache_range(va, len);
}

static const IeEnv env = {
	.ctx = NULL,
	.alloc_page = env_alloc_page,
	.free_page = env_free_page,
	.phys_to_virt = env_phys_to_virt,
	.sync_for_device = env_sync_for_device,
	.sync_for_cpu = env_sync_for_cpu,
};

static unsigned long live_pages(void)
{
	unsigned long flags, n = 0;
	int i;

	spin_lock_irqsave(&live_lock, flags);
	for (i = 0; i < MAX_PAGES; i++)
		n += live[i].size_log2 ? 1 : 0;
	spin_unlock_irqrestore(&live_lock, flags);
	return n;
}

/*
 * The remapping unit that covers segment 0, bus:devfn, from the ACPI DMAR table (VT-d 4.1 §8.3),
 * found by the crate's DMAR parser (ie_dmar_unit_for). edu sits on the root bus: no bridge
 * lookup is needed, so no bridge callback is passed.
 */
static int find_unit(u8 bus, u8 devfn, IeDmarUnit *unit)
{
	struct acpi_table_header *hdr;
	int st;

	if (ACPI_FAILURE(acpi_get_table(ACPI_SIG_DMAR, 0, &hdr)))
		return -ENOENT;
	st = ie_dmar_unit_for((const uint8_t *)hdr, hdr->length, 0, PCI_DEVID(bus, devfn), NULL,
			      NULL, unit);
	acpi_put_table(hdr);
	return st ? ie_status_errno(st) : 0;
}

static void __iomem *edu_bar;

/* One edu DMA, polled: edu raises no error for a DMA the IOMMU blocked. */
static bool edu_dma(u64 src, u64 dst, u64 cnt, u64 cmd)
{
	int i;

	writeq(src, edu_bar + EDU_DMA_SRC);
	writeq(dst, edu_bar + EDU_DMA_DST);
	writeq(cnt, edu_bar + EDU_DMA_CNT);
	writeq(cmd | EDU_DMA_RUN, edu_bar + EDU_DMA_CMD);
	/* A DMA takes 100 ms of QEMU's virtual time; 3 s is the bound. */
	for (i = 0; i < 300; i++) {
		if (!(readq(edu_bar + EDU_DMA_CMD) & EDU_DMA_RUN))
			return true;
		msleep(10);
	}
	return false;
}

static int run(struct pci_dev *pdev)
{
	u8 bus = pdev->bus->number, devfn = pdev->devfn;
	u32 rid = PCI_DEVID(bus, devfn), haw = 0, dev = 0, fake = 0, snoop_ioasid = 0, ioasid = 0;
	u32 reason = 99, n = 0;
	u64 base = 0, cap, ecap, pa, unmapped = 0, found = 0;
	void __iomem *regs_va;
	IeRegs regs = { 0 };
	IeDmarUnit dmar_unit = { 0 };
	IeVtdConfig cfg;
	IeUnit *unit = NULL;
	IeRegistry *registry = NULL;
	IeCtx *ctx = NULL;
	IeDeviceInfo *info;
	IeFault faults[4];
	struct page *buf_page;
	u8 *buf;
	int st, i;
	bool same, reachable = false;

	st = find_unit(bus, devfn, &dmar_unit);
	base = dmar_unit.register_base;
	haw = dmar_unit.host_address_width;
	STEP(!st && dmar_unit.register_len >= PAGE_SIZE, "dmar",
	     "unit at %#llx (%llu bytes, %s), host address width %u, device %02x:%02x.%x (rc %d)",
	     base, dmar_unit.register_len, dmar_unit.include_pci_all ? "INCLUDE_PCI_ALL" : "scope",
	     haw, bus, PCI_SLOT(devfn), PCI_FUNC(devfn), st);
	if (st)
		return st;
	regs_va = ioremap(base, dmar_unit.register_len);
	if (!regs_va)
		return -ENOMEM;
	cap = readq(regs_va + VTD_CAP);
	ecap = readq(regs_va + VTD_ECAP);
	STEP(!!(ecap & VTD_ECAP_SC) == expect_snoop && !!(cap & VTD_CAP_CM) == expect_cm &&
		     (!scalable || (ecap & VTD_ECAP_SMTS)),
	     "config", "CAP %#llx ECAP %#llx: SC %d (want %d) CM %d (want %d) SMTS %d coherent walk %d",
	     cap, ecap, !!(ecap & VTD_ECAP_SC), expect_snoop, !!(cap & VTD_CAP_CM), expect_cm,
	     !!(ecap & VTD_ECAP_SMTS), !!(ecap & VTD_ECAP_C));

	regs.base = (void *)regs_va;
	regs.len = dmar_unit.register_len;
	ie_vtd_config_default(&cfg);
	cfg.scalable = scalable;
	cfg.host_address_width = haw;
	cfg.host_address_width_from_dmar = true; /* reported as the firmware's declaration */
	st = IE(ie_vtd_create(&env, &regs, &cfg, &unit));
	STEP(st == IE_STATUS_OK, "create", "%s mode (status %d)", scalable ? "scalable" : "legacy", st);
	if (st)
		goto unmap_regs;
	st = IE(ie_unit_enable(unit));
	STEP(st == IE_STATUS_OK, "enable", "(status %d)", st);
	if (st)
		goto destroy_unit;
	st = IE(ie_registry_create(&env, &unit, 1, 20, &registry));
	STEP(st == IE_STATUS_OK, "registry", "(status %d)", st);
	if (st)
		goto disable;
	st = IE(ie_ctx_create(registry, 8, &ctx));
	STEP(st == IE_STATUS_OK, "context", "(status %d)", st);
	if (st)
		goto destroy_registry;

	st = IE(ie_ctx_bind(ctx, 0, rid, false, &dev));
	STEP(st == IE_STATUS_OK, "bind", "RID %#x (status %d)", rid, st);
	if (st)
		goto destroy_ctx;
	/* IeDeviceInfo is 864 bytes: off the 16 KiB kernel stack. */
	info = kzalloc(sizeof(*info), GFP_KERNEL);
	if (info) {
		st = IE(ie_ctx_device_info(ctx, dev, info));
		STEP(st == IE_STATUS_OK && info->enforce_snoop == expect_snoop,
		     "device_info", "enforce_snoop %d from %s, coherent_walk %d, coherent_dma %d from %s, ias %u, oas %u (status %d)",
		     info->enforce_snoop, info->sources.enforce_snoop.name, info->coherent_walk,
		     info->coherent_dma, info->sources.coherent_dma.name, info->ias, info->oas, st);
		kfree(info);
	}

	st = IE(ie_ctx_alloc(ctx, IE_IOASID_FLAG_ENFORCE_SNOOP, &snoop_ioasid));
	STEP(st == IE_STATUS_OK, "alloc_enforce_snoop", "IOASID %u (status %d)", snoop_ioasid, st);
	st = IE(ie_ctx_attach(ctx, dev, snoop_ioasid, &reason));
	if (expect_snoop) {
		STEP(st == IE_STATUS_OK, "attach_enforce_snoop", "accepted (status %d reason %u)", st, reason);
		ioasid = snoop_ioasid;
	} else {
		STEP(st == IE_STATUS_INCOMPATIBLE && reason == IE_MISSING_SNOOP_CONTROL,
		     "attach_enforce_snoop", "refused without ECAP.SC (status %d reason %u)", st, reason);
		st = IE(ie_ctx_alloc(ctx, 0, &ioasid));
		if (!st)
			st = IE(ie_ctx_attach(ctx, dev, ioasid, &reason));
		STEP(st == IE_STATUS_OK, "attach_plain", "IOASID %u (status %d)", ioasid, st);
	}
	if (st)
		goto destroy_ctx;

	buf_page = alloc_pages(GFP_KERNEL | __GFP_ZERO, 0);
	if (!buf_page) {
		st = -ENOMEM;
		goto destroy_ctx;
	}
	buf = page_address(buf_page);
	pa = page_to_phys(buf_page);
	/*
	 * From the map on, the unit may reach the page until an unmap of it returns OK or the
	 * IOASID's free does (the header: after TIMEOUT / HARDWARE / COMMAND_ERROR the device may
	 * still reach it, and only those calls settle the invalidation owed).
	 */
	reachable = true;
	st = IE(ie_ctx_map(ctx, ioasid, IOVA, pa, PAGE_SIZE, IE_PROT_READ | IE_PROT_WRITE));
	if (!st)
		st = IE(ie_ctx_translate(ctx, ioasid, IOVA + 0x10, &found));
	STEP(st == IE_STATUS_OK && IOVA != pa && found == pa + 0x10, "map",
	     "IOVA %#llx -> PA %#llx (status %d)", IOVA, pa, st);

	/* RAM -> edu through the IOMMU, then edu -> RAM at another offset: the bytes come back. */
	for (i = 0; i < LEN; i++)
		buf[i] = (u8)(0xa5 ^ (i * 7));
	same = edu_dma(IOVA, EDU_BUFFER, LEN, 0) &&
	       edu_dma(EDU_BUFFER, IOVA + PAT_OFF, LEN, EDU_DMA_TO_RAM);
	same = same && memcmp(buf, buf + PAT_OFF, LEN) == 0;
	st = IE(ie_unit_read_faults(unit, faults, ARRAY_SIZE(faults), &n));
	STEP(same && st == IE_STATUS_OK && n == 0, "dma", "%d bytes through IOVA %#llx, %u faults",
	     LEN, IOVA, n);

	st = IE(ie_ctx_unmap(ctx, ioasid, IOVA, PAGE_SIZE, &unmapped));
	if (st == IE_STATUS_OK)
		reachable = false;
	STEP(st == IE_STATUS_OK && unmapped == PAGE_SIZE, "unmap", "%llu bytes (status %d)",
	     unmapped, st);

	/* The same DMA now faults: nothing lands, one fault record names the device and page. */
	memset(buf + PAT_OFF, 0x5a, LEN);
	same = edu_dma(EDU_BUFFER, IOVA + PAT_OFF, LEN, EDU_DMA_TO_RAM);
	for (i = 0; i < LEN && buf[PAT_OFF + i] == 0x5a; i++)
		;
	STEP(same && i == LEN, "dma_blocked", "memory unchanged after the DMA");
	st = IE(ie_unit_read_faults(unit, faults, ARRAY_SIZE(faults), &n));
	STEP(st == IE_STATUS_OK && n >= 1 && faults[0].device_id == rid &&
		     faults[0].address == ((IOVA + PAT_OFF) & ~0xfffULL) && faults[0].write,
	     "fault", "%u records: SID %#x address %#llx %s reason %#x (status %d)", n,
	     n ? faults[0].device_id : 0, n ? faults[0].address : 0,
	     n && faults[0].write ? "write" : "read", n ? faults[0].reason : 0, st);
	st = IE(ie_unit_read_faults(unit, faults, ARRAY_SIZE(faults), &n));
	STEP(st == IE_STATUS_OK && n == 0, "fault_drained", "%u records left", n);

	/* Incoherent DMA needs a bound, no-snoop-capable device; edu is not one. */
	st = IE(ie_ctx_bind(ctx, 0, PCI_DEVID(0, PCI_DEVFN(5, 0)), true, &fake));
	STEP(st == IE_STATUS_OK && IE(ie_ctx_allow_incoherent_dma(ctx, dev)) == IE_STATUS_NOT_PERMITTED &&
		     IE(ie_ctx_allow_incoherent_dma(ctx, 31)) == IE_STATUS_NOT_FOUND &&
		     !IE(ie_ctx_incoherent_dma_allowed(ctx)) &&
		     IE(ie_ctx_allow_incoherent_dma(ctx, fake)) == IE_STATUS_OK &&
		     IE(ie_ctx_incoherent_dma_allowed(ctx)) &&
		     IE(ie_ctx_revoke_incoherent_dma(ctx, fake)) == IE_STATUS_OK &&
		     !IE(ie_ctx_incoherent_dma_allowed(ctx)) && IE(ie_ctx_unbind(ctx, fake)) == IE_STATUS_OK,
	     "incoherent_grant", "refused for edu and an unbound device, granted and revoked for a no-snoop-capable one");

	/* Teardown in order; out of order is refused. */
	STEP(IE(ie_ctx_free(ctx, ioasid)) == IE_STATUS_BUSY &&
		     IE(ie_registry_destroy(registry)) == IE_STATUS_BUSY &&
		     IE(ie_unit_destroy(unit)) == IE_STATUS_BUSY,
	     "teardown_order", "busy objects refused");
	st = IE(ie_ctx_detach(ctx, dev));
	if (!st) {
		st = IE(ie_ctx_free(ctx, ioasid));
		if (st == IE_STATUS_OK)
			reachable = false;
	}
	if (!st && ioasid != snoop_ioasid)
		st = IE(ie_ctx_free(ctx, snoop_ioasid));
	STEP(st == IE_STATUS_OK, "detach_free", "(status %d)", st);
	/* Never give the page back while the device may still write it: leak it instead. */
	if (!reachable)
		__free_pages(buf_page, 0);
	else
		pr_warn("ie_edu: DMA page %#llx leaked on purpose: no unmap or free of its IOASID returned OK, the device may still reach it\n",
			pa);
	STEP(!reachable, "buf_page", "%s", reachable ? "leaked: the device may still reach it" :
			"freed after an OK unmap");
destroy_ctx:
	st = IE(ie_ctx_destroy(ctx));
	STEP(st == IE_STATUS_OK, "ctx_destroy", "(status %d)", st);
	if (st)
		goto leave_enabled;
destroy_registry:
	st = IE(ie_registry_destroy(registry));
	STEP(st == IE_STATUS_OK, "registry_destroy", "(status %d)", st);
	if (st)
		goto leave_enabled;
disable:
	st = IE(ie_unit_disable(unit));
	STEP(st == IE_STATUS_OK, "disable", "(status %d)", st);
destroy_unit:
	st = IE(ie_unit_destroy(unit));
	STEP(st == IE_STATUS_OK && live_pages() == 0 && allocs == frees, "pages_back",
	     "%lu allocated, %lu freed, %lu live, %lu clflush calls (status %d)", allocs, frees,
	     live_pages(), syncs, st);
unmap_regs:
	iounmap(regs_va);
	return 0;
leave_enabled:
	/*
	 * A context or the registry is still alive, so a device may still be attached:
	 * disabling (TE clear) would let its DMA reach all of memory. The unit stays on,
	 * translating with its tables, and it, its pages and its register mapping are leaked.
	 */
	pr_warn("ie_edu: unit left enabled, its pages and registers leaked: a context or the registry could not be destroyed (status %d)\n",
		st);
	return 0;
}

static int ie_edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int st;

	st = pcim_enable_device(pdev);
	if (st)
		return st;
	pci_set_master(pdev);
	edu_bar = pcim_iomap(pdev, 0, 0);
	if (!edu_bar)
		return -ENOMEM;
	st = run(pdev);
	if (st)
		failed++;
	pr_info("ie_edu: result: %d passed, %d failed\n", passed, failed);
	return 0;
}

static const struct pci_device_id ie_edu_ids[] = {
	{ PCI_DEVICE(EDU_VENDOR, EDU_DEVICE) },
	{ 0 },
};
MODULE_DEVICE_TABLE(pci, ie_edu_ids);

static struct pci_driver ie_edu_driver = {
	.name = "ie_edu",
	.id_table = ie_edu_ids,
	.probe = ie_edu_probe,
};

module_pci_driver(ie_edu_driver);

MODULE_DESCRIPTION("iommu-engine's C ABI driving QEMU's intel-iommu for the edu device");
MODULE_LICENSE("Dual MIT/GPL");
