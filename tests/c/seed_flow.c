/*
 * The seed flow of the IOASID proposal, driven from C through include/iommu_engine.h against the
 * crate's VT-d, SMMUv3 and AMD-Vi models: bind -> device_info -> alloc(ENFORCE_SNOOP) -> attach ->
 * map -> the model translates with snoop enforced -> unmap -> the model faults; a device behind a
 * unit without snoop control is refused and nothing changes; incoherent DMA only for a
 * no-snoop-capable device, revocable. Every result is checked; the exit status is the number of failed checks.
 *
 * Built and run by tests/capi.rs: gcc -std=c11 -Wall -Wextra -Werror, linked against the host
 * static library (capi/, features "sim").
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "iommu_engine.h"

static int failures;
static int checks;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

#define OK(call) CHECK((st = (call)) == IE_STATUS_OK, "%s returned %d", #call, (int)st)

enum { KIB4 = 4096, MIB2 = 2 * 1024 * 1024 };

/* The same flow on an SMMUv3 model. Snooping is enforced because the platform declares its
 * devices CANWBS (ACPI IORT), not because of FWB: without the declaration the attach is refused. */
static void smmu_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    IeSimSmmuConfig mcfg = {
        .fwb = true, .cohacc = true, .ril = true, .canwbs = true, .httu = true
    };
    OK(ie_sim_smmu_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeSmmuConfig scfg;
    OK(ie_smmu_config_default(&scfg));
    scfg.stream_table = IE_STREAM_TABLE_TWO_LEVEL;
    /* IORT: the root complex's memory access flags have CANWBS, except for StreamID 0x30. */
    scfg.canwbs = true;
    scfg.from_firmware = true;
    scfg.n_declarations = 1;
    scfg.declarations[0] = (IeDeclaration){ .first_sid = 0x30, .last_sid = 0x30, .canwbs = false };
    IeUnit *unit = NULL;
    OK(ie_smmu_create(env, &regs, &scfg, &unit));
    OK(ie_unit_enable(unit));
    IeRegistry *registry = NULL;
    OK(ie_registry_create(env, (IeUnit *const *)&unit, 1, 20, &registry));
    IeCtx *ctx = NULL;
    OK(ie_ctx_create(registry, 0, &ctx));

    uint32_t dev = 0, ioasid = 0, reason = 0;
    OK(ie_ctx_bind(ctx, 0, 0x20, false, &dev));
    IeDeviceInfo info;
    OK(ie_ctx_device_info(ctx, dev, &info));
    CHECK(info.enforce_snoop && !info.no_snoop_capable, "smmu: snoop %d", info.enforce_snoop);
    CHECK(info.sources.enforce_snoop.kind == IE_SOURCE_KIND_FIRMWARE &&
              info.sources.oas.kind == IE_SOURCE_KIND_REGISTER &&
              strcmp(info.sources.oas.name, "IDR5.OAS") == 0,
          "smmu: sources %u %u %s", info.sources.enforce_snoop.kind, info.sources.oas.kind,
          info.sources.oas.name);
    uint32_t undeclared = 0;
    OK(ie_ctx_bind(ctx, 0, 0x30, false, &undeclared));
    OK(ie_ctx_device_info(ctx, undeclared, &info));
    CHECK(!info.enforce_snoop, "smmu: 0x30 is not CANWBS");
    CHECK(info.sources.no_snoop_capable.kind == IE_SOURCE_KIND_EMBEDDER &&
              info.sources.coherent_dma.kind != 0 && info.sources.coherent_dma.name[0] != 0,
          "smmu: no_snoop from %u, coherent_dma %d from %u %s",
          info.sources.no_snoop_capable.kind, info.coherent_dma, info.sources.coherent_dma.kind,
          info.sources.coherent_dma.name);
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_ENFORCE_SNOOP, &ioasid));
    CHECK(ie_ctx_attach(ctx, undeclared, ioasid, &reason) == IE_STATUS_INCOMPATIBLE &&
              reason == IE_MISSING_NOT_DECLARED,
          "smmu: attach without CANWBS: reason %u", reason);
    OK(ie_ctx_unbind(ctx, undeclared));
    OK(ie_ctx_attach(ctx, dev, ioasid, &reason));
    OK(ie_ctx_map(ctx, ioasid, 0x40000000, 0x80000000, MIB2, IE_PROT_READ));
    IeSimDma dma;
    OK(ie_sim_model_translate(model, 0x20, 0x40000010, false, &dma));
    CHECK(dma.pa == 0x80000010 && dma.snoop, "smmu: pa %#" PRIx64 " snoop %d", dma.pa,
          dma.snoop);
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000010, true, &dma) == IE_STATUS_NOT_FOUND,
          "smmu: write to a read-only mapping must fault");
    CHECK(ie_ctx_allow_incoherent_dma(ctx, dev) == IE_STATUS_NOT_PERMITTED, "smmu: not capable");
    uint64_t unmapped = 0;
    OK(ie_ctx_unmap(ctx, ioasid, 0x40000000, MIB2, &unmapped));
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000010, false, &dma) == IE_STATUS_NOT_FOUND,
          "smmu: DMA after unmap must fault");
    uint32_t events = 0;
    IeFault ev;
    OK(ie_unit_read_faults(unit, &ev, 1, &events));
    /* The oldest event: the write to the read-only mapping, F_PERMISSION (0x13). */
    CHECK(events == 1 && ev.device_id == 0x20 && ev.write && ev.address == 0x40000010 &&
              ev.reason == 0x13,
          "smmu: one event decoded with max 1: %u, StreamID %#x address %#" PRIx64 " type %#x", events,
          ev.device_id, ev.address, ev.reason);
    OK(ie_unit_drain_faults(unit, 64, &events));
    CHECK(events >= 1, "smmu: the rest of the events: %u", events);
    OK(ie_unit_drain_faults(unit, 64, &events));
    CHECK(events == 0, "smmu: events left after a drain: %u", events);
    /* More faulting DMAs than the 128-record event queue holds: the drain reports the records
     * the queue kept and that others were lost, then the queue records again. */
    for (int i = 0; i < 130; i++)
        CHECK(ie_sim_model_translate(model, 0x20, 0x40000000 + 0x1000 * (uint64_t)i, false,
                                     &dma) == IE_STATUS_NOT_FOUND,
              "smmu: fault %d", i);
    CHECK(ie_unit_drain_faults(unit, 256, &events) == IE_STATUS_FAULTS_LOST && events == 128,
          "smmu: overflow reported with %u events", events);
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000000, false, &dma) == IE_STATUS_NOT_FOUND,
          "smmu: fault after the overflow");
    OK(ie_unit_read_faults(unit, &ev, 1, &events));
    CHECK(events == 1 && ev.address == 0x40000000, "smmu: recording again: %u", events);
    /* iommufd's unmap-all (iova 0, length UINT64_MAX), whatever the address width. */
    OK(ie_ctx_map(ctx, ioasid, 0x1000, 0x80000000, KIB4, IE_PROT_READ));
    OK(ie_ctx_map(ctx, ioasid, 0x40000000, 0x80000000, MIB2, IE_PROT_READ));
    OK(ie_ctx_unmap(ctx, ioasid, 0, UINT64_MAX, &unmapped));
    CHECK(unmapped == KIB4 + MIB2, "smmu: unmap-all: %#" PRIx64, unmapped);
    CHECK(ie_sim_model_translate(model, 0x20, 0x1000, false, &dma) == IE_STATUS_NOT_FOUND,
          "smmu: DMA after unmap-all must fault");
    OK(ie_ctx_unmap(ctx, ioasid, 0, UINT64_MAX, &unmapped));
    CHECK(unmapped == 0, "smmu: unmap-all of nothing: %#" PRIx64, unmapped);
    /* iommufd: unbinding an attached device detaches it. */
    OK(ie_ctx_unbind(ctx, dev));
    CHECK(ie_ctx_device_info(ctx, dev, &info) == IE_STATUS_NOT_FOUND, "smmu: unbound");
    OK(ie_ctx_bind(ctx, 0, 0x20, false, &dev));

    /* iommufd dirty tracking (HTTU): IOMMU_HWPT_SET_DIRTY_TRACKING and IOMMU_HWPT_GET_DIRTY_BITMAP,
     * with and without IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR. */
    uint32_t tracked = 0;
    uint64_t bitmap = 0;
    const uint64_t base = 0x100000;
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_DIRTY_TRACKING, &tracked));
    OK(ie_ctx_attach(ctx, dev, tracked, &reason));
    OK(ie_ctx_map(ctx, tracked, base, 0x80000000, 4 * KIB4, IE_PROT_READ | IE_PROT_WRITE));
    OK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1, 0));
    CHECK(bitmap == 0, "smmu: freshly mapped pages are clean: %#" PRIx64, bitmap);
    OK(ie_sim_model_translate(model, 0x20, base + 2 * KIB4, true, &dma));
    for (int i = 0; i < 2; i++) {
        bitmap = 0;
        OK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1,
                                   IE_DIRTY_FLAG_NO_CLEAR));
        CHECK(bitmap == 1u << 2, "smmu: NO_CLEAR read %d: %#" PRIx64, i, bitmap);
    }
    OK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1, 0));
    bitmap = 0;
    OK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1, 0));
    CHECK(bitmap == 0, "smmu: the clearing read cleaned: %#" PRIx64, bitmap);
    OK(ie_sim_model_translate(model, 0x20, base + 2 * KIB4, true, &dma));
    OK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1, 0));
    CHECK(bitmap == 1u << 2, "smmu: the next write sets it again: %#" PRIx64, bitmap);
    CHECK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, 3 * 1024, &bitmap, 1, 0) ==
              IE_STATUS_INVALID_ARGUMENT, "smmu: page size not a power of two");
    CHECK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 65 * KIB4, KIB4, &bitmap, 1, 0) ==
              IE_STATUS_INVALID_ARGUMENT, "smmu: bitmap too small");
    OK(ie_ctx_set_dirty_tracking(ctx, tracked, false));
    CHECK(ie_ctx_get_dirty_bitmap(ctx, tracked, base, 4 * KIB4, KIB4, &bitmap, 1, 0) ==
              IE_STATUS_INVALID_ARGUMENT, "smmu: read while tracking is off");
    OK(ie_ctx_set_dirty_tracking(ctx, tracked, true));
    CHECK(ie_ctx_set_dirty_tracking(ctx, ioasid, true) == IE_STATUS_UNSUPPORTED,
          "smmu: an IOASID allocated without dirty tracking");

    OK(ie_ctx_destroy(ctx)); /* detaches and frees what is left */
    OK(ie_registry_destroy(registry));
    OK(ie_unit_disable(unit));
    OK(ie_unit_destroy(unit));
    OK(ie_sim_model_destroy(model));
}

/* I/O page faults (iommufd's fault queue) on `unit` over `model`, both up and taking page
 * requests: a device's page request reaches its context's queue (with `two`, not the other
 * context's, which also may not answer it), the VMM maps the page and answers, the device's
 * retry translates; a second answer is refused; detach answers what is left and nothing
 * overflowed. Then the unit and the model are destroyed. `who` opens every message. */
static void fault_flow(const char *who, IeSimModel *model, IeUnit *unit, const IeEnv *env, bool two)
{
    int32_t st;
    IeRegistry *registry = NULL;
    OK(ie_registry_create(env, (IeUnit *const *)&unit, 1, 20, &registry));
    IeCtx *ctx = NULL, *other = NULL;
    OK(ie_ctx_create(registry, 0, &ctx));
    if (two)
        OK(ie_ctx_create(registry, 0, &other));
    OK(ie_ctx_fault_queue_alloc(ctx));
    if (two)
        OK(ie_ctx_fault_queue_alloc(other));
    uint32_t dev = 0, ioasid = 0, reason = 0;
    OK(ie_ctx_bind(ctx, 0, 0x20, false, &dev));
    OK(ie_ctx_alloc(ctx, 0, &ioasid));
    OK(ie_ctx_attach(ctx, dev, ioasid, &reason));
    /* The other context first: dispatch must find the device's owner. */
    IeCtx *ctxs[2] = { two ? other : ctx, ctx };
    uint32_t nctx = two ? 2 : 1;

    OK(ie_sim_model_page_request(model, 0x20, 0x5000, true, 7, true));
    uint32_t queued = 0;
    OK(ie_registry_dispatch_faults(registry, 0, (IeCtx *const *)ctxs, nctx, &queued));
    CHECK(queued == 1, "%s: queued %u", who, queued);
    IePageFault faults[4];
    uint32_t n = 99;
    if (two) {
        OK(ie_ctx_read_faults(other, faults, 4, &n));
        CHECK(n == 0, "%s: the other context read %u", who, n);
    }
    OK(ie_ctx_read_faults(ctx, faults, 4, &n));
    CHECK(n == 1 && faults[0].device == 0x20 && faults[0].addr == 0x5000 &&
              faults[0].group == 7 && (faults[0].flags & IE_PAGE_FAULT_FLAG_LAST_PAGE) &&
              faults[0].perm == IE_PAGE_FAULT_PERM_WRITE,
          "%s: read %u: device %#x addr %#" PRIx64 " group %u flags %#x perm %#x", who, n,
          faults[0].device, faults[0].addr, faults[0].group, faults[0].flags, faults[0].perm);
    IeSimDma dma;
    CHECK(ie_sim_model_translate(model, 0x20, 0x5000, true, &dma) == IE_STATUS_NOT_FOUND,
          "%s: not mapped yet", who);
    OK(ie_ctx_map(ctx, ioasid, 0x5000, 0x6000000, KIB4, IE_PROT_READ | IE_PROT_WRITE));
    if (two)
        CHECK(ie_ctx_respond_fault(other, faults[0].cookie, IE_FAULT_RESPONSE_SUCCESS) ==
                  IE_STATUS_NOT_PERMITTED,
              "%s: another context's cookie", who);
    OK(ie_ctx_respond_fault(ctx, faults[0].cookie, IE_FAULT_RESPONSE_SUCCESS));
    CHECK(ie_ctx_respond_fault(ctx, faults[0].cookie, IE_FAULT_RESPONSE_SUCCESS) ==
              IE_STATUS_INVALID_ARGUMENT,
          "%s: second response", who);
    OK(ie_sim_model_translate(model, 0x20, 0x5000, true, &dma));
    CHECK(dma.pa == 0x6000000, "%s: retry translates to %#" PRIx64, who, dma.pa);

    /* A request left unanswered is answered by the detach. */
    OK(ie_sim_model_page_request(model, 0x20, 0x9000, false, 8, true));
    OK(ie_registry_dispatch_faults(registry, 0, (IeCtx *const *)ctxs, nctx, &queued));
    CHECK(queued == 1, "%s: second request queued %u", who, queued);
    OK(ie_ctx_detach(ctx, dev));
    OK(ie_ctx_read_faults(ctx, faults, 4, &n));
    CHECK(n == 0, "%s: detach left %u faults", who, n);
    uint64_t lost = 1;
    OK(ie_ctx_faults_overflowed(ctx, &lost));
    CHECK(lost == 0, "%s: overflowed %" PRIu64, who, lost);

    if (two)
        OK(ie_ctx_destroy(other));
    OK(ie_ctx_destroy(ctx));
    OK(ie_registry_destroy(registry));
    OK(ie_unit_disable(unit));
    OK(ie_unit_destroy(unit));
    OK(ie_sim_model_destroy(model));
}

/* The page-fault flow on a VT-d model with a page request queue, two contexts. */
static void page_fault_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    IeSimVtdConfig mcfg = { .scalable = true, .snoop_control = true, .page_requests = true };
    OK(ie_sim_vtd_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeVtdConfig vcfg;
    OK(ie_vtd_config_default(&vcfg));
    vcfg.scalable = true;
    IeUnit *unit = NULL;
    OK(ie_vtd_create(env, &regs, &vcfg, &unit));
    OK(ie_unit_enable(unit));
    OK(ie_unit_enable_page_requests(unit, 0));
    fault_flow("vtd", model, unit, env, true);
}

/* An SMMUv3 model as `mcfg` says, its unit enabled, a registry over it and a context whose
 * fault queue is open: the stall flow's set-up (the PRI flow is fault_flow's). */
typedef struct {
    IeSimModel *model;
    IeUnit *unit;
    IeRegistry *registry;
    IeCtx *ctx;
} SmmuRig;

static SmmuRig smmu_rig(IeSimArena *arena, const IeEnv *env, IeSimSmmuConfig mcfg)
{
    int32_t st;
    SmmuRig r = { 0 };
    OK(ie_sim_smmu_model_create(arena, &mcfg, &r.model));
    IeRegs regs;
    OK(ie_sim_model_regs(r.model, &regs));
    IeSmmuConfig scfg;
    OK(ie_smmu_config_default(&scfg));
    OK(ie_smmu_create(env, &regs, &scfg, &r.unit));
    OK(ie_unit_enable(r.unit));
    OK(ie_registry_create(env, (IeUnit *const *)&r.unit, 1, 20, &r.registry));
    OK(ie_ctx_create(r.registry, 0, &r.ctx));
    OK(ie_ctx_fault_queue_alloc(r.ctx));
    return r;
}

static void smmu_rig_destroy(SmmuRig *r)
{
    int32_t st;
    OK(ie_ctx_destroy(r->ctx));
    OK(ie_registry_destroy(r->registry));
    OK(ie_unit_disable(r->unit));
    OK(ie_unit_destroy(r->unit));
    OK(ie_sim_model_destroy(r->model));
}

/* The same on the SMMUv3 model with a PRI queue (ie_unit_enable() sets it up on a unit with
 * IDR0.PRI): the answer is a CMD_PRI_RESP, and the device's retry translates. */
static void smmu_page_fault_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    IeSimSmmuConfig mcfg = { .cohacc = true, .pri = true };
    OK(ie_sim_smmu_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeSmmuConfig scfg;
    OK(ie_smmu_config_default(&scfg));
    IeUnit *unit = NULL;
    OK(ie_smmu_create(env, &regs, &scfg, &unit));
    OK(ie_unit_enable(unit));
    fault_flow("smmu", model, unit, env, false);
}

/* A stalled transaction on the SMMUv3 model (IDR0.STALL_MODEL = 0b00) through the C ABI: a
 * platform device declared able to stall (IeDeviceHints.stall) writes to a page nobody mapped;
 * the SMMU holds the write and records it with Stall = 1. The event interrupt
 * (ie_unit_drain_faults()) files it, ie_registry_dispatch_faults() queues it in the context,
 * the VMM maps the page and answers Success: CMD_RESUME with Retry, and the held write
 * completes at the page's address. A second stall, answered Invalid, is aborted. */
static void smmu_stall_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    SmmuRig rig = smmu_rig(arena, env, (IeSimSmmuConfig){ .cohacc = true, .stall = true });
    IeDeviceHints hints = { .size = sizeof(IeDeviceHints), .stall = true };
    uint32_t dev = 0, ioasid = 0, reason = 0;
    OK(ie_ctx_bind_with(rig.ctx, 0, 0x40, false, &hints, &dev));
    OK(ie_ctx_alloc(rig.ctx, 0, &ioasid));
    OK(ie_ctx_attach(rig.ctx, dev, ioasid, &reason));

    IeSimDma dma;
    CHECK(ie_sim_model_translate(rig.model, 0x40, 0x5000, true, &dma) == IE_STATUS_NOT_FOUND,
          "stall: the write completed");
    uint32_t events = 0, queued = 0;
    OK(ie_unit_drain_faults(rig.unit, 16, &events));
    CHECK(events == 1, "stall: %u events", events);
    OK(ie_registry_dispatch_faults(rig.registry, 0, (IeCtx *const *)&rig.ctx, 1, &queued));
    CHECK(queued == 1, "stall: queued %u", queued);
    IePageFault faults[4];
    uint32_t n = 99;
    OK(ie_ctx_read_faults(rig.ctx, faults, 4, &n));
    CHECK(n == 1 && faults[0].device == 0x40 && faults[0].addr == 0x5000 &&
              (faults[0].flags & IE_PAGE_FAULT_FLAG_STALL) &&
              faults[0].perm == IE_PAGE_FAULT_PERM_WRITE,
          "stall: read %u: device %#x addr %#" PRIx64 " flags %#x perm %#x", n,
          faults[0].device, faults[0].addr, faults[0].flags, faults[0].perm);
    uint32_t stag = faults[0].group;
    IeSimStallEnd end = IE_SIM_STALL_END_TERMINATED;
    uint64_t pa = 1;
    OK(ie_sim_model_stall(rig.model, 0x40, stag, &end, &pa));
    CHECK(end == IE_SIM_STALL_END_HELD, "stall: held before the answer (%u)", (unsigned)end);
    OK(ie_ctx_map(rig.ctx, ioasid, 0x5000, 0x6000000, KIB4, IE_PROT_READ | IE_PROT_WRITE));
    OK(ie_ctx_respond_fault(rig.ctx, faults[0].cookie, IE_FAULT_RESPONSE_SUCCESS));
    OK(ie_sim_model_stall(rig.model, 0x40, stag, &end, &pa));
    CHECK(end == IE_SIM_STALL_END_COMPLETED && pa == 0x6000000,
          "stall: resumed: end %u pa %#" PRIx64, (unsigned)end, pa);
    CHECK(ie_ctx_respond_fault(rig.ctx, faults[0].cookie, IE_FAULT_RESPONSE_SUCCESS) ==
              IE_STATUS_INVALID_ARGUMENT,
          "stall: second response");

    /* Answered Invalid: CMD_RESUME with Abort. */
    CHECK(ie_sim_model_translate(rig.model, 0x40, 0x9000, false, &dma) == IE_STATUS_NOT_FOUND,
          "stall: the read completed");
    OK(ie_unit_drain_faults(rig.unit, 16, &events));
    OK(ie_registry_dispatch_faults(rig.registry, 0, (IeCtx *const *)&rig.ctx, 1, &queued));
    OK(ie_ctx_read_faults(rig.ctx, faults, 4, &n));
    CHECK(n == 1 && (faults[0].flags & IE_PAGE_FAULT_FLAG_STALL), "stall: second read %u", n);
    OK(ie_ctx_respond_fault(rig.ctx, faults[0].cookie, IE_FAULT_RESPONSE_INVALID));
    OK(ie_sim_model_stall(rig.model, 0x40, faults[0].group, &end, NULL));
    CHECK(end == IE_SIM_STALL_END_ABORTED, "stall: aborted: end %u", (unsigned)end);

    OK(ie_ctx_detach(rig.ctx, dev));
    smmu_rig_destroy(&rig);
}

/* The seed flow on an AMD-Vi model (QEMU's amd-iommu): create, enable, bind, attach to an
 * ENFORCE_SNOOP IOASID (its leaves carry FC), a write to a read-only page refused and decoded from
 * the event log as IO_PAGE_FAULT (event code 2), the unmap's invalidation seen by the next DMA,
 * detach blocking the device. */
static void amdvi_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    OK(ie_sim_amdvi_model_create(arena, true, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeAmdViConfig acfg;
    OK(ie_amdvi_config_default(&acfg));
    IeUnit *unit = NULL;
    OK(ie_amdvi_create(env, &regs, &acfg, &unit));
    OK(ie_unit_enable(unit));
    IeRegistry *registry = NULL;
    OK(ie_registry_create(env, (IeUnit *const *)&unit, 1, 20, &registry));
    IeCtx *ctx = NULL;
    OK(ie_ctx_create(registry, 0, &ctx));
    uint32_t dev = 0, ioasid = 0, reason = 0;
    OK(ie_ctx_bind(ctx, 0, 0x20, false, &dev));
    IeSimDma dma;
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000010, false, &dma) == IE_STATUS_NOT_FOUND,
          "amdvi: bound, not attached: blocked");
    uint32_t events = 0;
    OK(ie_unit_drain_faults(unit, 64, &events));
    CHECK(events == 1, "amdvi: the blocked DMA's event: %u", events);
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_ENFORCE_SNOOP, &ioasid));
    OK(ie_ctx_attach(ctx, dev, ioasid, &reason));
    OK(ie_ctx_map(ctx, ioasid, 0x40000000, 0x80000000, MIB2, IE_PROT_READ));
    OK(ie_sim_model_translate(model, 0x20, 0x40000010, false, &dma));
    CHECK(dma.pa == 0x80000010 && dma.snoop, "amdvi: pa %#" PRIx64 " snoop (FC) %d", dma.pa,
          dma.snoop);
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000010, true, &dma) == IE_STATUS_NOT_FOUND,
          "amdvi: write to a read-only mapping must fault");
    /* Two more faults: a read with max 1 consumes one event, the next read the next. */
    for (uint64_t i = 1; i <= 2; i++)
        CHECK(ie_sim_model_translate(model, 0x20, 0x40000010 + 0x1000 * i, true, &dma) ==
                  IE_STATUS_NOT_FOUND,
              "amdvi: write fault %" PRIu64, i);
    IeFault ev;
    OK(ie_unit_read_faults(unit, &ev, 1, &events));
    CHECK(events == 1 && ev.device_id == 0x20 && ev.write && ev.address == 0x40000010 &&
              ev.reason == 2 && !ev.pasid_valid,
          "amdvi: %u events, DeviceID %#x address %#" PRIx64 " code %u", events, ev.device_id,
          ev.address, ev.reason);
    OK(ie_unit_read_faults(unit, &ev, 1, &events));
    CHECK(events == 1 && ev.address == 0x40001010,
          "amdvi: the second read, max 1: %u events, address %#" PRIx64, events, ev.address);
    OK(ie_unit_drain_faults(unit, 1, &events));
    CHECK(events == 1, "amdvi: the third event, drained with max 1: %u", events);
    OK(ie_unit_drain_faults(unit, 64, &events));
    CHECK(events == 0, "amdvi: events left after the reads: %u", events);
    uint64_t unmapped = 0;
    OK(ie_ctx_unmap(ctx, ioasid, 0x40000000, MIB2, &unmapped));
    CHECK(unmapped == MIB2, "amdvi: unmapped %" PRIu64, unmapped);
    CHECK(ie_sim_model_translate(model, 0x20, 0x40000010, false, &dma) == IE_STATUS_NOT_FOUND,
          "amdvi: DMA after unmap must fault (IOTLB invalidated)");
    OK(ie_ctx_map(ctx, ioasid, 0x1000, 0x80000000, KIB4, IE_PROT_READ));
    OK(ie_sim_model_translate(model, 0x20, 0x1008, false, &dma));
    CHECK(dma.pa == 0x80000008, "amdvi: 4K pa %#" PRIx64, dma.pa);
    OK(ie_ctx_detach(ctx, dev));
    CHECK(ie_sim_model_translate(model, 0x20, 0x1008, false, &dma) == IE_STATUS_NOT_FOUND,
          "amdvi: detached: blocked");
    OK(ie_ctx_free(ctx, ioasid));
    OK(ie_ctx_destroy(ctx));
    OK(ie_registry_destroy(registry));
    OK(ie_unit_disable(unit));
    OK(ie_unit_destroy(unit));
    OK(ie_sim_model_destroy(model));
}

int main(void)
{
    int32_t st;
    IeSimArena *arena = NULL;
    OK(ie_sim_arena_create(64u << 20, &arena));
    IeEnv env;
    OK(ie_sim_arena_env(arena, &env));
    uint64_t pages_at_start = ie_sim_arena_live_pages(arena);

    /* Two units: a VT-d unit with snoop control and one without. */
    IeSimModel *snoop_model = NULL, *plain_model = NULL;
    IeSimVtdConfig with_sc = { .scalable = false, .snoop_control = true, .caching_mode = false,
                               .fault_records = 4 };
    IeSimVtdConfig without_sc = { .scalable = false, .snoop_control = false, .caching_mode = false };
    OK(ie_sim_vtd_model_create(arena, &with_sc, &snoop_model));
    OK(ie_sim_vtd_model_create(arena, &without_sc, &plain_model));
    IeRegs regs_sc, regs_plain;
    OK(ie_sim_model_regs(snoop_model, &regs_sc));
    OK(ie_sim_model_regs(plain_model, &regs_plain));

    IeVtdConfig vcfg;
    ie_vtd_config_default(&vcfg);
    /* Unit 0's host address width from the DMAR table (what QEMU's reports: aw-bits); unit 1
       left undeclared (36 bits). */
    IeVtdConfig dmar = vcfg;
    dmar.host_address_width = 48;
    dmar.host_address_width_from_dmar = true;
    IeUnit *units[2] = { NULL, NULL };
    OK(ie_vtd_create(&env, &regs_sc, &dmar, &units[0]));
    OK(ie_vtd_create(&env, &regs_plain, &vcfg, &units[1]));
    OK(ie_unit_enable(units[0]));
    OK(ie_unit_enable(units[1]));

    IeRegistry *registry = NULL;
    OK(ie_registry_create(&env, (IeUnit *const *)units, 2, 20, &registry));
    IeCtx *ctx = NULL;
    OK(ie_ctx_create(registry, 8, &ctx));

    /* bind: RID 00:04.0 behind unit 0 (no-snoop capable), 00:05.0 behind unit 1. */
    uint32_t gpu = 0, nic = 0;
    OK(ie_ctx_bind(ctx, 0, 0x20, true, &gpu));
    OK(ie_ctx_bind(ctx, 1, 0x28, false, &nic));
    uint32_t again = 0;
    CHECK(ie_ctx_bind(ctx, 0, 0x20, true, &again) == IE_STATUS_BUSY, "second bind of a device");

    IeDeviceInfo info;
    memset(&info, 0, sizeof info);
    OK(ie_ctx_device_info(ctx, gpu, &info));
    CHECK(info.enforce_snoop && info.no_snoop_capable, "gpu: snoop %d nosnoop %d",
          info.enforce_snoop, info.no_snoop_capable);
    CHECK(info.ias >= 39 && (info.page_sizes & KIB4), "ias %u sizes %#" PRIx64, info.ias,
          info.page_sizes);
    CHECK(info.oas == 48 && info.sources.oas.kind == IE_SOURCE_KIND_FIRMWARE &&
              strcmp(info.sources.oas.name, "ACPI DMAR Host Address Width") == 0,
          "gpu: oas %u from %u %s", info.oas, info.sources.oas.kind, info.sources.oas.name);
    CHECK(!info.has_physical_function && info.sources.hints.kind == IE_SOURCE_KIND_EMBEDDER,
          "gpu: bound without hints");
    /* An SR-IOV virtual function bound with its physical function (00:04.2 of 00:04.0). */
    IeDeviceHints vf_hints = { .size = sizeof(IeDeviceHints), .ats = false,
                               .has_physical_function = true,
                               .physical_function = 0x20 };
    uint32_t vf = 0;
    CHECK(ie_ctx_bind_with(ctx, 0, 0x22, false, NULL, &vf) == IE_STATUS_INVALID_ARGUMENT,
          "bind_with without hints");
    OK(ie_ctx_bind_with(ctx, 0, 0x22, false, &vf_hints, &vf));
    IeDeviceInfo vf_info;
    memset(&vf_info, 0, sizeof vf_info);
    OK(ie_ctx_device_info(ctx, vf, &vf_info));
    CHECK(vf_info.has_physical_function && vf_info.physical_function == 0x20 && !vf_info.ats &&
              vf_info.sources.hints.kind == IE_SOURCE_KIND_EMBEDDER,
          "vf: pf %d %#x from %s", vf_info.has_physical_function, vf_info.physical_function,
          vf_info.sources.hints.name);
    OK(ie_ctx_unbind(ctx, vf));
    OK(ie_ctx_device_info(ctx, nic, &info));
    CHECK(!info.enforce_snoop, "nic's unit has no snoop control");
    CHECK(info.oas == 36 && info.sources.oas.kind == IE_SOURCE_KIND_EMBEDDER,
          "nic: undeclared HAW %u from %u %s", info.oas, info.sources.oas.kind,
          info.sources.oas.name);

    /* alloc(ENFORCE_SNOOP) -> attach -> map -> the model translates with SNP. */
    uint32_t ioasid = 0;
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_ENFORCE_SNOOP, &ioasid));
    uint32_t reason = 99;
    OK(ie_ctx_attach(ctx, gpu, ioasid, &reason));
    CHECK(reason == IE_MISSING_NONE, "reason %u", reason);

    const uint64_t iova = 0x100000, pa = 0x4000000;
    OK(ie_ctx_map(ctx, ioasid, iova, pa, MIB2 + KIB4, IE_PROT_READ | IE_PROT_WRITE));
    CHECK(ie_ctx_map(ctx, ioasid, iova, pa, KIB4, IE_PROT_READ) == IE_STATUS_EXISTS, "overlap");
    CHECK(ie_ctx_map(ctx, ioasid, 0xfee00000, pa, KIB4, IE_PROT_READ) == IE_STATUS_RESERVED,
          "MSI window");
    /* Privileged-only pages only in an IOASID allocated for supervisor requests, which a
       legacy-mode unit cannot honour. */
    CHECK(ie_ctx_map(ctx, ioasid, 0x7000000, pa, KIB4, IE_PROT_READ | IE_PROT_PRIV) ==
              IE_STATUS_UNSUPPORTED,
          "PRIV without IE_IOASID_FLAG_SUPERVISOR");
    CHECK(!info.supervisor && info.sources.supervisor.kind == IE_SOURCE_KIND_REGISTER &&
              strcmp(info.sources.supervisor.name, "ECAP.SRS") == 0,
          "legacy unit: supervisor %d from %s", info.supervisor, info.sources.supervisor.name);
    uint32_t sup = 0;
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_SUPERVISOR, &sup));
    CHECK(ie_ctx_attach(ctx, gpu, sup, &reason) == IE_STATUS_INCOMPATIBLE &&
              reason == IE_MISSING_SUPERVISOR_REQUESTS,
          "supervisor IOASID on a legacy unit: reason %u", reason);
    OK(ie_ctx_free(ctx, sup));
    uint64_t found = 0;
    OK(ie_ctx_translate(ctx, ioasid, iova + 0x1234, &found));
    CHECK(found == pa + 0x1234, "translate %#" PRIx64, found);

    IeSimDma dma;
    memset(&dma, 0, sizeof dma);
    OK(ie_sim_model_translate(snoop_model, 0x20, iova + MIB2 + 8, true, &dma));
    CHECK(dma.pa == pa + MIB2 + 8 && dma.snoop, "model: pa %#" PRIx64 " snoop %d", dma.pa,
          dma.snoop);

    /* A device behind the unit without snoop control is refused; nothing changes. */
    reason = 0;
    CHECK(ie_ctx_attach(ctx, nic, ioasid, &reason) == IE_STATUS_INCOMPATIBLE, "nic attach");
    CHECK(reason == IE_MISSING_SNOOP_CONTROL, "reason %u", reason);
    CHECK(ie_status_errno(IE_STATUS_INCOMPATIBLE) == -22, "incompatible is -EINVAL");
    CHECK(ie_sim_model_translate(plain_model, 0x28, iova, false, &dma) == IE_STATUS_NOT_FOUND,
          "nic DMA must fault");
    CHECK(ie_ctx_detach(ctx, nic) == IE_STATUS_NOT_ATTACHED, "nic is not attached");

    /* unmap -> flushed -> the model faults. */
    uint64_t unmapped = 0;
    OK(ie_ctx_unmap(ctx, ioasid, iova, MIB2 + KIB4, &unmapped));
    CHECK(unmapped == MIB2 + KIB4, "unmapped %#" PRIx64, unmapped);
    CHECK(ie_sim_model_translate(snoop_model, 0x20, iova + MIB2 + 8, true, &dma) ==
              IE_STATUS_NOT_FOUND,
          "DMA after unmap must fault");
    CHECK(ie_ctx_translate(ctx, ioasid, iova, &found) == IE_STATUS_NOT_FOUND, "record");
    /* Three write faults in unit 0's four fault recording registers, read with max 1 three
     * times: one record each, in order, the others left pending (IE_STATUS_BUSY) until read. */
    uint32_t nfaults = 0;
    IeFault rec;
    OK(ie_unit_drain_faults(units[0], 64, &nfaults));
    for (uint64_t i = 0; i < 3; i++)
        CHECK(ie_sim_model_translate(snoop_model, 0x20, iova + 0x1000 * i, true, &dma) ==
                  IE_STATUS_NOT_FOUND,
              "vtd: write fault %" PRIu64, i);
    for (uint64_t i = 0; i < 3; i++) {
        int32_t st = ie_unit_read_faults(units[0], &rec, 1, &nfaults);
        CHECK(st == (i < 2 ? IE_STATUS_BUSY : IE_STATUS_OK) && nfaults == 1 &&
                  rec.address == iova + 0x1000 * i && rec.write,
              "vtd: read %" PRIu64 " with max 1: status %d, %u records, address %#" PRIx64, i,
              st, nfaults, rec.address);
    }
    OK(ie_unit_drain_faults(units[0], 64, &nfaults));
    CHECK(nfaults == 0, "vtd: records left after the reads: %u", nfaults);

    /* Incoherent DMA needs a bound, no-snoop-capable device. */
    CHECK(!ie_ctx_incoherent_dma_allowed(ctx), "no grant yet");
    CHECK(ie_ctx_allow_incoherent_dma(ctx, nic) == IE_STATUS_NOT_PERMITTED, "nic: not capable");
    CHECK(ie_ctx_allow_incoherent_dma(ctx, 31) == IE_STATUS_NOT_FOUND, "unbound device");
    OK(ie_ctx_allow_incoherent_dma(ctx, gpu));
    CHECK(ie_ctx_incoherent_dma_allowed(ctx), "granted");
    OK(ie_ctx_revoke_incoherent_dma(ctx, gpu));
    CHECK(!ie_ctx_incoherent_dma_allowed(ctx), "revoked");

    /* A device bound with its direct regions (RMRR / RMR): firmware memory and a doorbell
       page, identity-mapped in the IOASID it is attached to, reserved while it is. */
    const IeDirectRegion direct[2] = {
        { .start = 0x7f000000, .length = 2 * KIB4, .mmio = false, .relaxable = false },
        { .start = 0x10000000, .length = KIB4, .mmio = true, .relaxable = true },
    };
    uint32_t fw = 0;
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, NULL, 1, &fw) ==
              IE_STATUS_INVALID_ARGUMENT,
          "bind_direct: NULL regions");
    const IeDirectRegion misaligned = { .start = 0x7f000800, .length = KIB4 };
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, &misaligned, 1, &fw) ==
              IE_STATUS_INVALID_ARGUMENT,
          "bind_direct: misaligned region");
    const IeDirectRegion wraps = { .start = UINT64_MAX & ~0xfffull, .length = 2 * KIB4 };
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, &wraps, 1, &fw) ==
              IE_STATUS_INVALID_ARGUMENT,
          "bind_direct: wrapping region");
    const IeDirectRegion overlapping[2] = { direct[0], { .start = 0x7f001000, .length = KIB4 } };
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, overlapping, 2, &fw) ==
              IE_STATUS_INVALID_ARGUMENT,
          "bind_direct: overlapping regions");
    const IeDirectRegion five[5] = { direct[0], direct[1], direct[0], direct[0], direct[0] };
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, five, 5, &fw) == IE_STATUS_NO_SPACE,
          "bind_direct: more than 4 regions");
    CHECK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, direct, 2, NULL) ==
              IE_STATUS_INVALID_ARGUMENT,
          "bind_direct: NULL out");
    OK(ie_ctx_bind_direct(ctx, 0, 0x30, false, NULL, direct, 2, &fw));
    /* A mapping where the firmware memory must go: that IOASID is refused, nothing changed. */
    uint32_t busy = 0;
    OK(ie_ctx_alloc(ctx, 0, &busy));
    OK(ie_ctx_map(ctx, busy, 0x7f001000, pa, KIB4, IE_PROT_READ));
    reason = 0;
    CHECK(ie_ctx_attach(ctx, fw, busy, &reason) == IE_STATUS_INCOMPATIBLE &&
              reason == IE_MISSING_DIRECT_REGION,
          "bind_direct: colliding mapping, reason %u", reason);
    CHECK(ie_sim_model_translate(snoop_model, 0x30, 0x7f000000, true, &dma) ==
              IE_STATUS_NOT_FOUND,
          "bind_direct: not attached, blocked");
    OK(ie_ctx_attach(ctx, fw, ioasid, &reason));
    OK(ie_sim_model_translate(snoop_model, 0x30, 0x7f001ff8, true, &dma));
    CHECK(dma.pa == 0x7f001ff8, "bind_direct: firmware memory at %#" PRIx64, dma.pa);
    OK(ie_sim_model_translate(snoop_model, 0x30, 0x10000010, true, &dma));
    CHECK(dma.pa == 0x10000010, "bind_direct: doorbell at %#" PRIx64, dma.pa);
    OK(ie_ctx_translate(ctx, ioasid, 0x7f000000, &found));
    CHECK(found == 0x7f000000, "bind_direct: recorded at %#" PRIx64, found);
    CHECK(ie_ctx_map(ctx, ioasid, 0x7f000000, pa, KIB4, IE_PROT_READ) == IE_STATUS_RESERVED,
          "bind_direct: map over a direct region");
    CHECK(ie_ctx_unmap(ctx, ioasid, 0x10000000, KIB4, &unmapped) == IE_STATUS_RESERVED,
          "bind_direct: unmap of a direct region");
    OK(ie_ctx_detach(ctx, fw));
    CHECK(ie_sim_model_translate(snoop_model, 0x30, 0x7f000000, true, &dma) ==
              IE_STATUS_NOT_FOUND,
          "bind_direct: unmapped by the detach");
    CHECK(ie_ctx_translate(ctx, ioasid, 0x7f000000, &found) == IE_STATUS_NOT_FOUND,
          "bind_direct: gone from the record");
    OK(ie_ctx_unbind(ctx, fw));
    OK(ie_ctx_free(ctx, busy));
    /* No regions: as ie_ctx_bind_with() / ie_ctx_bind(). */
    OK(ie_ctx_bind_direct(ctx, 0, 0x30, false, &vf_hints, NULL, 0, &fw));
    OK(ie_ctx_unbind(ctx, fw));

    /* Teardown in order; out of order is refused. */
    CHECK(ie_ctx_free(ctx, ioasid) == IE_STATUS_BUSY, "free with a device attached");
    CHECK(ie_registry_destroy(registry) == IE_STATUS_BUSY, "registry with a context");
    CHECK(ie_unit_destroy(units[0]) == IE_STATUS_BUSY, "unit in a registry");
    OK(ie_ctx_detach(ctx, gpu));
    OK(ie_ctx_free(ctx, ioasid));
    OK(ie_ctx_destroy(ctx));
    OK(ie_registry_destroy(registry));
    CHECK(ie_unit_destroy(units[0]) == IE_STATUS_BUSY, "unit still enabled");
    OK(ie_unit_disable(units[0]));
    OK(ie_unit_disable(units[1]));
    OK(ie_unit_destroy(units[0]));
    OK(ie_unit_destroy(units[1]));
    OK(ie_sim_model_destroy(snoop_model));
    OK(ie_sim_model_destroy(plain_model));
    smmu_flow(arena, &env);
    page_fault_flow(arena, &env);
    smmu_page_fault_flow(arena, &env);
    smmu_stall_flow(arena, &env);
    amdvi_flow(arena, &env);
    CHECK(ie_sim_arena_live_pages(arena) == pages_at_start, "pages leaked: %" PRIu64 " live",
          ie_sim_arena_live_pages(arena) - pages_at_start);
    OK(ie_sim_arena_destroy(arena));

    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures;
}
