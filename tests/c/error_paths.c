/*
 * The C ABI's error paths, driven from C against the crate's models: NULL and wrong handles,
 * invalid configurations (an out-of-range enum value in a config struct), destroy order, PASID
 * allocation, quota and attachment on a scalable VT-d model, unmap of an unmapped range, faults
 * drained after a faulting DMA, and the errno of every status. Every result is checked; the exit
 * status is the number of failed checks.
 *
 * Built and run by tests/capi.rs like seed_flow.c.
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
#define IS(call, want) \
    CHECK((st = (call)) == (want), "%s returned %d, want %d", #call, (int)st, (int)(want))

enum { KIB4 = 4096 };

static void errno_mapping(void)
{
    static const struct { int32_t status, err; } map[] = {
        { IE_STATUS_OK, 0 },          { IE_STATUS_INVALID_ARGUMENT, -22 },
        { IE_STATUS_INCOMPATIBLE, -22 }, { IE_STATUS_BUSY, -16 },
        { IE_STATUS_NO_MEMORY, -12 }, { IE_STATUS_NOT_FOUND, -2 },
        { IE_STATUS_NOT_ATTACHED, -2 }, { IE_STATUS_EXISTS, -17 },
        { IE_STATUS_OUT_OF_RANGE, -34 }, { IE_STATUS_RESERVED, -98 },
        { IE_STATUS_NO_SPACE, -28 },  { IE_STATUS_NOT_PERMITTED, -1 },
        { IE_STATUS_UNSUPPORTED, -95 }, { IE_STATUS_TIMEOUT, -110 },
        { IE_STATUS_HARDWARE, -5 },   { IE_STATUS_FAULTS_LOST, -75 },
        { IE_STATUS_COMMAND_ERROR, -5 }, { IE_STATUS_BUFFER_TOO_SMALL, -90 },
        { IE_STATUS_LEAKED, -5 },     { IE_STATUS_TOO_BIG, -7 },
        { 20, -22 },
        { -1, -22 }, { INT32_MIN, -22 },
        { INT32_MAX, -22 },
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        CHECK(ie_status_errno(map[i].status) == map[i].err, "errno of %d: %d", map[i].status,
              ie_status_errno(map[i].status));
}

/* Every function refuses NULL handles and NULL out-pointers without touching anything. */
static void null_handles(const IeEnv *env, const IeRegs *regs)
{
    int32_t st;
    uint32_t u = 0;
    uint64_t q = 0;
    IeDeviceInfo info;
    IeUnit *unit = NULL;
    IeVtdConfig vcfg;
    IeSmmuConfig scfg;
    OK(ie_vtd_config_default(&vcfg));
    OK(ie_smmu_config_default(&scfg));
    IS(ie_vtd_config_default(NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_smmu_config_default(NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_vtd_create(NULL, regs, &vcfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_vtd_create(env, NULL, &vcfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_vtd_create(env, regs, NULL, &unit), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_vtd_create(env, regs, &vcfg, NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_smmu_create(env, regs, NULL, &unit), IE_STATUS_INVALID_ARGUMENT);
    CHECK(unit == NULL, "no unit on failure");
    IeEnv no_alloc = *env;
    no_alloc.alloc_page = NULL;
    IS(ie_vtd_create(&no_alloc, regs, &vcfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    /* A mapped window too short for the unit is refused before any access. */
    static uint64_t page[512];
    IeRegs short_window = { .base = page, .len = sizeof page };
    IS(ie_smmu_create(env, &short_window, &scfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    short_window.len = 2048;
    IS(ie_vtd_create(env, &short_window, &vcfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    CHECK(unit == NULL, "no unit on a short window");
    IeRegs no_read = *regs;
    no_read.read32 = NULL;
    IS(ie_vtd_create(env, &no_read, &vcfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_enable(NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_disable(NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_drain_faults(NULL, 8, &u), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_destroy(NULL), IE_STATUS_INVALID_ARGUMENT);
    IeRegistry *registry = NULL;
    IS(ie_registry_create(env, NULL, 1, 20, &registry), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_registry_destroy(NULL), IE_STATUS_INVALID_ARGUMENT);
    IeCtx *ctx = NULL;
    IS(ie_ctx_create(NULL, 0, &ctx), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_destroy(NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_bind(NULL, 0, 0, false, &u), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_unbind(NULL, 0), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_device_info(NULL, 0, &info), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_alloc(NULL, 0, &u), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_free(NULL, 0), IE_STATUS_INVALID_ARGUMENT);
    u = 77;
    IS(ie_ctx_attach(NULL, 0, 0, &u), IE_STATUS_INVALID_ARGUMENT);
    CHECK(u == IE_MISSING_NONE, "reason %u after a refused attach", u);
    IS(ie_ctx_attach_pasid(NULL, 0, 1, 0, NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_detach(NULL, 0), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_detach_pasid(NULL, 0, 1), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_map(NULL, 0, 0, 0, KIB4, IE_PROT_READ), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_unmap(NULL, 0, 0, KIB4, &q), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_translate(NULL, 0, 0, &q), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_alloc_pasid(NULL, &u), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_free_pasid(NULL, 1), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_allow_incoherent_dma(NULL, 0), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_revoke_incoherent_dma(NULL, 0), IE_STATUS_INVALID_ARGUMENT);
    CHECK(!ie_ctx_incoherent_dma_allowed(NULL), "NULL context has no grant");
}

/* A C caller may store any integer in an enum-typed field: the crate must refuse it. */
static void bad_smmu_config(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    IeSimSmmuConfig mcfg = { .fwb = true, .cohacc = true, .ril = true };
    OK(ie_sim_smmu_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeSmmuConfig scfg;
    OK(ie_smmu_config_default(&scfg));
    scfg.stream_table = 3;
    IeUnit *unit = NULL;
    IS(ie_smmu_create(env, &regs, &scfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    CHECK(unit == NULL, "no unit for an invalid stream table layout");
    scfg.stream_table = 0x80000000u;
    IS(ie_smmu_create(env, &regs, &scfg, &unit), IE_STATUS_INVALID_ARGUMENT);
    if (unit != NULL)
        ie_unit_destroy(unit);
    /* Extreme widths: refused or clamped, never a panic (an abort of the whole kernel). */
    static const uint32_t sid_bits[] = { 32, 33, 64, 255, UINT32_MAX };
    for (size_t i = 0; i < sizeof sid_bits / sizeof sid_bits[0]; i++) {
        OK(ie_smmu_config_default(&scfg));
        scfg.sid_bits = sid_bits[i];
        unit = NULL;
        st = ie_smmu_create(env, &regs, &scfg, &unit);
        CHECK(st == IE_STATUS_UNSUPPORTED, "sid_bits %u: status %d", sid_bits[i], (int)st);
        if (unit != NULL)
            ie_unit_destroy(unit);
    }
    OK(ie_sim_model_destroy(model));
}

/* PASIDs on a scalable VT-d unit: allocation, quota, attach_pasid, free while attached. */
static void scalable_flow(IeSimArena *arena, const IeEnv *env)
{
    int32_t st;
    IeSimModel *model = NULL;
    IeSimVtdConfig mcfg = { .scalable = true, .snoop_control = true, .caching_mode = false };
    OK(ie_sim_vtd_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    IeVtdConfig vcfg;
    OK(ie_vtd_config_default(&vcfg));
    vcfg.scalable = true;
    IeUnit *unit = NULL;
    static const uint32_t widths[] = { 1, 64, 65, 255, UINT32_MAX };
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        IeVtdConfig odd = vcfg;
        odd.queue_pages_log2 = (uint8_t)(widths[i] > 255 ? 255 : widths[i] + 7);
        odd.pasid_bits = widths[i];
        odd.host_address_width = widths[i];
        odd.poll_budget = widths[i] == 1 ? 0 : UINT32_MAX;
        st = ie_vtd_create(env, &regs, &odd, &unit);
        CHECK(st != IE_STATUS_OK || unit != NULL, "width %u: status %d", widths[i], (int)st);
        if (unit != NULL) {
            ie_unit_destroy(unit);
            unit = NULL;
        }
    }
    OK(ie_vtd_create(env, &regs, &vcfg, &unit));
    OK(ie_unit_enable(unit));
    IeRegistry *registry = NULL;
    IeUnit *const one[1] = { unit };
    static const uint32_t pasid_bits[] = { 0, 21, 32, UINT32_MAX };
    for (size_t i = 0; i < sizeof pasid_bits / sizeof pasid_bits[0]; i++) {
        st = ie_registry_create(env, one, 1, pasid_bits[i], &registry);
        if (st == IE_STATUS_OK) {
            IeCtx *big = NULL;
            /* A quota above the 64 PASIDs a context holds is refused, not capped. */
            IS(ie_ctx_create(registry, UINT32_MAX, &big), IE_STATUS_INVALID_ARGUMENT);
            IS(ie_ctx_create(registry, 65, &big), IE_STATUS_INVALID_ARGUMENT);
            CHECK(big == NULL, "no context for a refused quota");
            OK(ie_ctx_create(registry, 64, &big));
            uint32_t p = 0;
            st = ie_ctx_alloc_pasid(big, &p);
            CHECK(st == IE_STATUS_OK || st == IE_STATUS_NO_SPACE, "pasid_bits %u: %d",
                  pasid_bits[i], (int)st);
            OK(ie_ctx_destroy(big));
            OK(ie_registry_destroy(registry));
        } else {
            CHECK(st == IE_STATUS_INVALID_ARGUMENT, "pasid_bits %u: %d", pasid_bits[i], (int)st);
        }
        registry = NULL;
    }
    IeUnit *const units[1] = { unit };
    IS(ie_registry_create(env, units, 0, 20, &registry), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_registry_create(env, units, 9, 20, &registry), IE_STATUS_INVALID_ARGUMENT);
    IeUnit *const null_unit[1] = { NULL };
    IS(ie_registry_create(env, null_unit, 1, 20, &registry), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_registry_create(env, units, 1, 20, &registry));
    IeCtx *ctx = NULL;
    OK(ie_ctx_create(registry, 2, &ctx));

    uint32_t dev = 0, reason = 0;
    IS(ie_ctx_bind(ctx, 1, 0x20, false, &dev), IE_STATUS_NOT_FOUND);
    IS(ie_ctx_bind(ctx, 256, 0x20, false, &dev), IE_STATUS_NOT_FOUND);
    IS(ie_ctx_bind(ctx, 0, 0x20, false, NULL), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_ctx_bind(ctx, 0, 0x20, false, &dev));
    IeDeviceInfo info;
    OK(ie_ctx_device_info(ctx, dev, &info));
    CHECK(info.pasid_bits > 0, "scalable unit: pasid bits %u", info.pasid_bits);
    IS(ie_ctx_device_info(ctx, dev, NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_device_info(ctx, 70000, &info), IE_STATUS_NOT_FOUND);
    IS(ie_ctx_device_info(ctx, dev + 1, &info), IE_STATUS_NOT_FOUND);

    uint32_t p1 = 0, p2 = 0, p3 = 0;
    OK(ie_ctx_alloc_pasid(ctx, &p1));
    OK(ie_ctx_alloc_pasid(ctx, &p2));
    CHECK(p1 != 0 && p2 != 0 && p1 != p2, "pasids %u %u", p1, p2);
    IS(ie_ctx_alloc_pasid(ctx, &p3), IE_STATUS_NO_SPACE);
    IS(ie_ctx_alloc_pasid(ctx, NULL), IE_STATUS_INVALID_ARGUMENT);

    uint32_t flat = 0, spaced = 0;
    IS(ie_ctx_alloc(ctx, 1u << 8, &flat), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_ctx_alloc(ctx, 0, &flat));
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_PASID, &spaced));
    reason = 77;
    IS(ie_ctx_attach_pasid(ctx, dev, p1, flat, &reason), IE_STATUS_INCOMPATIBLE);
    CHECK(reason == IE_MISSING_NOT_PASID_CAPABLE, "reason %u", reason);
    IS(ie_ctx_attach_pasid(ctx, dev, 1u << 20, spaced, &reason), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_ctx_attach_pasid(ctx, dev, p1, spaced, &reason));
    CHECK(reason == IE_MISSING_NONE, "reason %u", reason);
    OK(ie_ctx_map(ctx, spaced, 0x200000, 0x90000000, KIB4, IE_PROT_READ | IE_PROT_WRITE));
    IS(ie_ctx_free_pasid(ctx, p1), IE_STATUS_BUSY);
    IS(ie_ctx_free(ctx, spaced), IE_STATUS_BUSY);
    IS(ie_ctx_detach_pasid(ctx, dev, p2), IE_STATUS_NOT_ATTACHED);
    OK(ie_ctx_detach_pasid(ctx, dev, p1));
    OK(ie_ctx_free_pasid(ctx, p1));
    IS(ie_ctx_free_pasid(ctx, p1), IE_STATUS_NOT_FOUND);
    OK(ie_ctx_alloc_pasid(ctx, &p3)); /* the quota has room again */

    /* map / unmap argument checks on the flat IOASID. */
    OK(ie_ctx_attach(ctx, dev, flat, &reason));
    IS(ie_ctx_map(ctx, flat, 0x100000, 0x80000000, 0, IE_PROT_READ), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_map(ctx, flat, 0x100001, 0x80000000, KIB4, IE_PROT_READ),
       IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_map(ctx, flat, 0x100000, 0x80000000, KIB4, 1u << 8), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_map(ctx, 70000, 0x100000, 0x80000000, KIB4, IE_PROT_READ), IE_STATUS_NOT_FOUND);
    IS(ie_ctx_map(ctx, flat, UINT64_MAX & ~0xfffull, 0x80000000, KIB4, IE_PROT_READ),
       IE_STATUS_OUT_OF_RANGE);
    uint64_t unmapped = 99;
    OK(ie_ctx_unmap(ctx, flat, 0x100000, KIB4, &unmapped));
    CHECK(unmapped == 0, "unmap of an unmapped range removed %" PRIu64, unmapped);
    uint64_t pa = 0;
    IS(ie_ctx_translate(ctx, flat, 0x100000, NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_translate(ctx, flat, 0x100000, &pa), IE_STATUS_NOT_FOUND);

    /* A faulting DMA leaves a fault record; draining reports and clears it. */
    IeSimDma dma;
    IS(ie_sim_model_translate(model, 0x20, 0x100000, false, &dma), IE_STATUS_NOT_FOUND);
    uint32_t faults = 0;
    OK(ie_unit_drain_faults(unit, 16, &faults));
    CHECK(faults >= 1, "faults drained: %u", faults);
    OK(ie_unit_drain_faults(unit, 16, &faults));
    CHECK(faults == 0, "faults left after a drain: %u", faults);
    OK(ie_unit_drain_faults(unit, 16, NULL));

    /* ie_unit_read_faults decodes the record: requester, page, direction, reason. */
    IS(ie_sim_model_translate(model, 0x20, 0x100234, true, &dma), IE_STATUS_NOT_FOUND);
    IeFault rec[2];
    memset(rec, 0xff, sizeof rec);
    IS(ie_unit_read_faults(unit, NULL, 1, &faults), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_read_faults(NULL, rec, 2, &faults), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_unit_read_faults(unit, rec, 2, &faults));
    CHECK(faults == 1 && rec[0].device_id == 0x20 && rec[0].address == 0x100000 &&
              rec[0].write && !rec[0].pasid_valid && rec[0].reason != 0,
          "decoded fault: %u records, SID %#x address %#" PRIx64 " write %d reason %#x", faults,
          rec[0].device_id, rec[0].address, rec[0].write, rec[0].reason);
    CHECK(rec[1].device_id == 0xffffffffu, "only the records seen are written");
    IS(ie_sim_model_translate(model, 0x20, 0x100000, false, &dma), IE_STATUS_NOT_FOUND);
    /* A read of at most 0 records clears none: the record stays pending for the next read. */
    IS(ie_unit_read_faults(unit, NULL, 0, &faults), IE_STATUS_BUSY);
    CHECK(faults == 0, "read with max 0: %u", faults);
    OK(ie_unit_read_faults(unit, rec, 2, &faults));
    CHECK(faults == 1 && rec[0].address == 0x100000 && !rec[0].write,
          "the record left by max 0: %u, %#" PRIx64, faults, rec[0].address);
    OK(ie_unit_read_faults(unit, rec, 2, &faults));
    CHECK(faults == 0, "records left: %u", faults);

    /* The model has one fault recording register (CAP.NFR = 0): a second fault before the
     * drain is lost (FSTS.PFO). The drain reports the record it read and that faults were lost,
     * and acknowledges the overflow. */
    IS(ie_sim_model_translate(model, 0x20, 0x100000, true, &dma), IE_STATUS_NOT_FOUND);
    IS(ie_sim_model_translate(model, 0x20, 0x101000, true, &dma), IE_STATUS_NOT_FOUND);
    memset(rec, 0xff, sizeof rec);
    IS(ie_unit_read_faults(unit, rec, 2, &faults), IE_STATUS_FAULTS_LOST);
    CHECK(faults == 1 && rec[0].address == 0x100000, "the record kept: %u, %#" PRIx64, faults,
          rec[0].address);
    OK(ie_unit_read_faults(unit, rec, 2, &faults));
    CHECK(faults == 0, "nothing left after the overflow: %u", faults);
    IS(ie_sim_model_translate(model, 0x20, 0x100000, true, &dma), IE_STATUS_NOT_FOUND);
    IS(ie_sim_model_translate(model, 0x20, 0x101000, true, &dma), IE_STATUS_NOT_FOUND);
    IS(ie_unit_drain_faults(unit, 16, &faults), IE_STATUS_FAULTS_LOST);
    CHECK(faults == 1, "drained with the overflow: %u", faults);
    OK(ie_unit_drain_faults(unit, 16, &faults));
    CHECK(faults == 0, "nothing left after the overflow: %u", faults);

    /* A handle of the wrong type (a cast) is refused, not reinterpreted. */
    IS(ie_unit_enable((IeUnit *)ctx), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_destroy((IeUnit *)registry), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_map((IeCtx *)unit, 0, 0, 0, KIB4, IE_PROT_READ), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_destroy((IeCtx *)registry), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_ctx_create((IeRegistry *)ctx, 0, NULL), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_registry_destroy((IeRegistry *)unit), IE_STATUS_INVALID_ARGUMENT);
    IeUnit *const not_units[1] = { (IeUnit *)ctx };
    IeRegistry *other = NULL;
    IS(ie_registry_create(env, not_units, 1, 20, &other), IE_STATUS_INVALID_ARGUMENT);
    CHECK(!ie_ctx_incoherent_dma_allowed((IeCtx *)unit), "a unit is no context");

    /* Destroy order: every out-of-order destroy is refused and changes nothing. */
    IS(ie_registry_destroy(registry), IE_STATUS_BUSY);
    IS(ie_unit_destroy(unit), IE_STATUS_BUSY);
    OK(ie_ctx_destroy(ctx));
    /* A second destroy is a contract violation; while the page is not reused (the arena here
     * hands out a different one first) the cleared tag catches it. */
    IS(ie_ctx_destroy(ctx), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_destroy(unit), IE_STATUS_BUSY);
    OK(ie_registry_destroy(registry));
    IS(ie_registry_destroy(registry), IE_STATUS_INVALID_ARGUMENT);
    IS(ie_unit_destroy(unit), IE_STATUS_BUSY); /* still enabled */
    IS(ie_sim_arena_destroy(arena), IE_STATUS_BUSY); /* a model is left */
    OK(ie_unit_disable(unit));
    OK(ie_unit_destroy(unit));
    IS(ie_unit_destroy(unit), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_sim_model_destroy(model));
}

int main(void)
{
    int32_t st;
    errno_mapping();
    IeSimArena *arena = NULL;
    IS(ie_sim_arena_create(64u << 20, NULL), IE_STATUS_INVALID_ARGUMENT);
    OK(ie_sim_arena_create(64u << 20, &arena));
    IeEnv env;
    OK(ie_sim_arena_env(arena, &env));
    uint64_t pages_at_start = ie_sim_arena_live_pages(arena);
    IeSimModel *model = NULL;
    IeSimVtdConfig mcfg = { .scalable = false, .snoop_control = true, .caching_mode = false };
    OK(ie_sim_vtd_model_create(arena, &mcfg, &model));
    IeRegs regs;
    OK(ie_sim_model_regs(model, &regs));
    null_handles(&env, &regs);
    OK(ie_sim_model_destroy(model));
    bad_smmu_config(arena, &env);
    scalable_flow(arena, &env);
    CHECK(ie_sim_arena_live_pages(arena) == pages_at_start, "pages leaked: %" PRIu64 " live",
          ie_sim_arena_live_pages(arena) - pages_at_start);
    OK(ie_sim_arena_destroy(arena));
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures;
}
