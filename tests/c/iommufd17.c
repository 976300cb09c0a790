/*
 * iommufd behaviours of issue 17 (items 4-6) from C, through include/iommu_engine.h, on the
 * crate's VT-d and SMMUv3 models: IOMMU_OPTION_HUGE_PAGES (ie_ctx_set_huge_pages: a 2 MiB map
 * needs one more table page, its leaf table, with the option off), IOMMU_IOAS_COPY
 * (ie_ctx_copy: same pages, same permissions, all or nothing), IOMMU_IOAS_IOVA_RANGES
 * (ie_ctx_iova_ranges: reserved regions and the address width excluded, the count needed when
 * the buffer is too small), per-device capabilities at bind (ie_ctx_bind_with: a device without
 * PASID refused a PASID attach; ie_ctx_device_info reports its width and PRI). Every result is checked; the exit status is the number of failed
 * checks.
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

/* The flows on one unit, whose model is `model` and whose devices are `a` and `b`. */
/* Per-device capabilities declared at bind (item 4): a device that is not PASID-capable behind
   a unit that is (`pasid_unit`) is refused a PASID attach naming the device; ie_ctx_device_info()
   reports its width, from the bind, and its PRI. */
static void device_caps(const char *name, IeCtx *ctx, uint32_t id, bool pasid_unit)
{
    int32_t st;
    IeDeviceHints hints = { .size = sizeof(IeDeviceHints), .has_pasid_bits = true,
                            .pasid_bits = 0, .pri = true };
    uint32_t dev = 0, io = 0, pasid = 0, reason = 0;
    OK(ie_ctx_bind_with(ctx, 0, id, false, &hints, &dev));
    IeDeviceInfo info;
    memset(&info, 0, sizeof info);
    OK(ie_ctx_device_info(ctx, dev, &info));
    CHECK(info.pasid_bits == 0 && info.pri && !info.ats, "%s: pasid %u pri %d", name,
          info.pasid_bits, info.pri);
    if (pasid_unit)
        CHECK(info.sources.pasid_bits.kind == IE_SOURCE_KIND_EMBEDDER,
              "%s: the device's width comes from the bind: %s", name,
              info.sources.pasid_bits.name);
    OK(ie_ctx_alloc(ctx, IE_IOASID_FLAG_PASID, &io));
    OK(ie_ctx_alloc_pasid(ctx, &pasid));
    CHECK(ie_ctx_attach_pasid(ctx, dev, pasid, io, &reason) == IE_STATUS_INCOMPATIBLE &&
              reason == (pasid_unit ? IE_MISSING_DEVICE_PASID : IE_MISSING_PASID),
          "%s: PASID attach of a device without PASID: reason %u", name, reason);
    OK(ie_ctx_free_pasid(ctx, pasid));
    OK(ie_ctx_free(ctx, io));
    OK(ie_ctx_unbind(ctx, dev));
}

static void flows(const char *name, IeSimArena *arena, IeSimModel *model, IeCtx *ctx, uint32_t a,
                  uint32_t b)
{
    int32_t st;
    uint32_t da = 0, db = 0, src = 0, dst = 0, reason = 0;
    OK(ie_ctx_bind(ctx, 0, a, false, &da));
    OK(ie_ctx_bind(ctx, 0, b, false, &db));
    OK(ie_ctx_alloc(ctx, 0, &src));
    OK(ie_ctx_alloc(ctx, 0, &dst));
    OK(ie_ctx_attach(ctx, da, src, &reason));
    OK(ie_ctx_attach(ctx, db, dst, &reason));

    /* HUGE_PAGES off: the 2 MiB map needs its leaf table (one page more than with it on). */
    uint32_t max = 0;
    OK(ie_ctx_max_page_log2(ctx, src, &max));
    CHECK(max == 64, "%s: no limit by default: %u", name, max);
    /* A page nearby first, so that both maps below find every table above the leaf table. */
    OK(ie_ctx_map(ctx, src, 0x40800000, 0x80000000, KIB4, IE_PROT_READ));
    uint64_t before = ie_sim_arena_live_pages(arena);
    OK(ie_ctx_map(ctx, src, 0x40000000, 0x80000000, MIB2, IE_PROT_READ | IE_PROT_WRITE));
    uint64_t block_pages = ie_sim_arena_live_pages(arena) - before;
    CHECK(block_pages == 0, "%s: a block needs no table: %" PRIu64, name, block_pages);
    CHECK(ie_ctx_set_huge_pages(ctx, src, false) == IE_STATUS_BUSY,
          "%s: huge pages off with a domain and a mapping", name);
    uint64_t unmapped = 0;
    OK(ie_ctx_unmap(ctx, src, 0x40000000, MIB2, &unmapped));
    OK(ie_ctx_unmap(ctx, src, 0x40800000, KIB4, &unmapped));
    CHECK(ie_ctx_set_huge_pages(ctx, src, false) == IE_STATUS_OK, "%s: off", name);
    OK(ie_ctx_map(ctx, src, 0x40800000, 0x80000000, KIB4, IE_PROT_READ));
    OK(ie_ctx_max_page_log2(ctx, src, &max));
    CHECK(max == 12, "%s: 4 KiB pages only: %u", name, max);
    before = ie_sim_arena_live_pages(arena);
    OK(ie_ctx_map(ctx, src, 0x40200000, 0x80000000, MIB2, IE_PROT_READ | IE_PROT_WRITE));
    uint64_t small_pages = ie_sim_arena_live_pages(arena) - before;
    CHECK(small_pages == block_pages + 1, "%s: table pages %" PRIu64 " with blocks, %" PRIu64
          " without", name, block_pages, small_pages);
    IeSimDma dma;
    OK(ie_sim_model_translate(model, a, 0x40200000 + MIB2 - 8, true, &dma));
    CHECK(dma.pa == 0x80000000 + MIB2 - 8, "%s: DMA with 4 KiB pages: %#" PRIx64, name, dma.pa);

    /* IOAS_COPY: a read-write run and a read-only one, from the middle of the first. */
    OK(ie_ctx_map(ctx, src, 0x40400000, 0x90000000, 4 * KIB4, IE_PROT_READ));
    OK(ie_ctx_copy(ctx, src, 0x40201000, dst, 0x50001000, MIB2 - KIB4 + 4 * KIB4));
    OK(ie_sim_model_translate(model, b, 0x50001008, true, &dma));
    CHECK(dma.pa == 0x80001008, "%s: copied read-write page: %#" PRIx64, name, dma.pa);
    OK(ie_sim_model_translate(model, b, 0x50200008, false, &dma));
    CHECK(dma.pa == 0x90000008, "%s: copied read-only page: %#" PRIx64, name, dma.pa);
    CHECK(ie_sim_model_translate(model, b, 0x50200008, true, &dma) == IE_STATUS_NOT_FOUND,
          "%s: the copy of a read-only page is read-only", name);
    /* A hole in the source: refused, nothing mapped. */
    CHECK(ie_ctx_copy(ctx, src, 0x40400000, dst, 0x60000000, 8 * KIB4) == IE_STATUS_NOT_FOUND,
          "%s: copy over a hole", name);
    uint64_t found = 0;
    CHECK(ie_ctx_translate(ctx, dst, 0x60000000, &found) == IE_STATUS_NOT_FOUND,
          "%s: nothing copied", name);
    /* The destination refuses the second run: the first is unmapped again. */
    OK(ie_ctx_map(ctx, dst, 0x60000000 + MIB2 + KIB4, 0xa0000000, KIB4, IE_PROT_READ));
    CHECK(ie_ctx_copy(ctx, src, 0x40200000, dst, 0x60000000, MIB2 + 4 * KIB4) ==
              IE_STATUS_EXISTS,
          "%s: copy onto a mapping", name);
    CHECK(ie_ctx_translate(ctx, dst, 0x60000000, &found) == IE_STATUS_NOT_FOUND,
          "%s: the first run undone", name);
    CHECK(ie_sim_model_translate(model, b, 0x60000000, false, &dma) == IE_STATUS_NOT_FOUND,
          "%s: the device does not reach the undone run", name);

    /* IOVA_RANGES: the context's reserved region and the unit's are excluded, the address
       width bounds the last range. */
    OK(ie_ctx_reserve_region(ctx, 0x10000000, 0x100000));
    uint32_t num = 0;
    CHECK(ie_ctx_iova_ranges(ctx, dst, NULL, &num) == IE_STATUS_BUFFER_TOO_SMALL && num >= 2,
          "%s: the count needed: %u", name, num);
    CHECK(ie_status_errno(IE_STATUS_BUFFER_TOO_SMALL) == -90, "EMSGSIZE");
    IeIovaRange ranges[8];
    uint32_t needed = num;
    num = 8;
    OK(ie_ctx_iova_ranges(ctx, dst, ranges, &num));
    CHECK(num == needed && ranges[0].start == 0 && ranges[0].last == 0x0fffffff &&
              ranges[1].start == 0x10100000,
          "%s: %u ranges, first %#" PRIx64 "-%#" PRIx64 ", second from %#" PRIx64, name, num,
          ranges[0].start, ranges[0].last, ranges[1].start);
    for (uint32_t i = 0; i + 1 < num; i++)
        CHECK(ranges[i].last < ranges[i + 1].start, "%s: ranges in order", name);
    CHECK(ie_ctx_map(ctx, dst, ranges[num - 1].last + 1, 0x80000000, KIB4, IE_PROT_READ) !=
              IE_STATUS_OK,
          "%s: beyond the last range", name);
    OK(ie_ctx_map(ctx, dst, ranges[num - 1].last + 1 - KIB4, 0x80000000, KIB4, IE_PROT_READ));
    OK(ie_ctx_unbind(ctx, da));
    OK(ie_ctx_unbind(ctx, db));
}

int main(void)
{
    int32_t st;
    IeSimArena *arena = NULL;
    OK(ie_sim_arena_create(64u << 20, &arena));
    IeEnv env;
    OK(ie_sim_arena_env(arena, &env));

    /* VT-d */
    IeSimModel *vtd_model = NULL;
    IeSimVtdConfig vm = { .scalable = true, .snoop_control = true, .caching_mode = false };
    OK(ie_sim_vtd_model_create(arena, &vm, &vtd_model));
    IeRegs vregs;
    OK(ie_sim_model_regs(vtd_model, &vregs));
    IeVtdConfig vcfg;
    ie_vtd_config_default(&vcfg);
    vcfg.scalable = true;
    IeUnit *vtd = NULL;
    OK(ie_vtd_create(&env, &vregs, &vcfg, &vtd));
    OK(ie_unit_enable(vtd));
    IeRegistry *vreg = NULL;
    OK(ie_registry_create(&env, (IeUnit *const *)&vtd, 1, 20, &vreg));
    IeCtx *vctx = NULL;
    OK(ie_ctx_create(vreg, 4, &vctx));
    flows("vtd", arena, vtd_model, vctx, 0x20, 0x28);
    device_caps("vtd", vctx, 0x30, true);
    OK(ie_ctx_destroy(vctx));
    OK(ie_registry_destroy(vreg));
    OK(ie_unit_disable(vtd));
    OK(ie_unit_destroy(vtd));
    OK(ie_sim_model_destroy(vtd_model));

    /* SMMUv3 */
    IeSimModel *smmu_model = NULL;
    IeSimSmmuConfig sm = { .fwb = true, .cohacc = true, .ril = true, .canwbs = true };
    OK(ie_sim_smmu_model_create(arena, &sm, &smmu_model));
    IeRegs sregs;
    OK(ie_sim_model_regs(smmu_model, &sregs));
    IeSmmuConfig scfg;
    OK(ie_smmu_config_default(&scfg));
    IeUnit *smmu = NULL;
    OK(ie_smmu_create(&env, &sregs, &scfg, &smmu));
    OK(ie_unit_enable(smmu));
    IeRegistry *sreg = NULL;
    OK(ie_registry_create(&env, (IeUnit *const *)&smmu, 1, 20, &sreg));
    IeCtx *sctx = NULL;
    OK(ie_ctx_create(sreg, 4, &sctx));
    flows("smmu", arena, smmu_model, sctx, 0x20, 0x300);
    device_caps("smmu", sctx, 0x400, false);
    OK(ie_ctx_destroy(sctx));
    OK(ie_registry_destroy(sreg));
    OK(ie_unit_disable(smmu));
    OK(ie_unit_destroy(smmu));
    OK(ie_sim_model_destroy(smmu_model));

    OK(ie_sim_arena_destroy(arena));
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures;
}
