//! Entry at EL1, MMU off: enable FP/SIMD (the target uses NEON), set the stack, zero .bss,
//! install the exception vectors, call `kmain`. Every exception is reported and ends the run.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .bss.boot, "aw", @nobits
    .balign 16
boot_stack: .skip 65536
boot_stack_top:

    .section .text.boot, "ax"
    .global _start
_start:
    mov x19, x0                     /* device tree address, if any */
    mov x0, #(3 << 20)              /* CPACR_EL1.FPEN = 0b11 */
    msr cpacr_el1, x0
    isb
    adrp x0, boot_stack_top
    add x0, x0, :lo12:boot_stack_top
    mov sp, x0
    adrp x0, __bss_start
    add x0, x0, :lo12:__bss_start
    adrp x1, __bss_end
    add x1, x1, :lo12:__bss_end
1:  cmp x0, x1
    b.hs 2f
    stp xzr, xzr, [x0], #16
    b 1b
2:  adrp x0, boot_vectors
    add x0, x0, :lo12:boot_vectors
    msr vbar_el1, x0
    isb
    mov x0, x19
    bl kmain
3:  wfe
    b 3b

    .macro vector_entry kind
    .balign 128
    mov x0, #\kind
    mrs x1, esr_el1
    mrs x2, elr_el1
    mrs x3, far_el1
    b exception_entry
    .endm

    .section .text.vectors, "ax"
    .balign 2048
boot_vectors:
    vector_entry 0
    vector_entry 1
    vector_entry 2
    vector_entry 3
    vector_entry 4
    vector_entry 5
    vector_entry 6
    vector_entry 7
    vector_entry 8
    vector_entry 9
    vector_entry 10
    vector_entry 11
    vector_entry 12
    vector_entry 13
    vector_entry 14
    vector_entry 15
    "#
);
