//! PVH entry: 32-bit protected mode, paging off, %ebx = hvm_start_info. Zeroes .bss, builds
//! identity page tables for the first 4 GiB with 2 MiB pages (the upper 2 GiB, where q35 puts
//! MMIO: PCI BARs, the VT-d unit at 0xFED9_0000, the APICs, are PCD|PWT = uncached), enables
//! PAE + long mode + paging, loads a 64-bit GDT and calls `kmain(start_info)`.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4              /* namesz: "Xen\0" */
    .long 4              /* descsz */
    .long 18             /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long _start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
/* 1 MiB: the crate keeps its fixed-size tables inline (a VtdUnit and an IoasidCtx are tens of KiB). */
boot_stack: .skip 0x100000
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff   /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff   /* 0x10: data */
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot32, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    movl %ebx, %esi                 /* keep start_info */

    /* zero .bss (page tables and stack included) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* 2048 PD entries: 2 MiB pages covering 4 GiB; >= 2 GiB uncached */
    movl $boot_pd, %edi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                 /* P | RW | PS */
    cmpl $1024, %ecx
    jb 2f
    orl $0x18, %eax                 /* PWT | PCD */
2:  movl %eax, (%edi,%ecx,8)
    movl $0, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 1b

    /* PDPT[0..4] -> the four PDs; PML4[0] -> PDPT */
    movl $boot_pdpt, %edi
    movl $boot_pd + 3, %eax
    movl %eax, 0(%edi)
    addl $4096, %eax
    movl %eax, 8(%edi)
    addl $4096, %eax
    movl %eax, 16(%edi)
    addl $4096, %eax
    movl %eax, 24(%edi)
    movl $boot_pml4, %edi
    movl $boot_pdpt + 3, %eax
    movl %eax, (%edi)

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* PG | PE */
    movl %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                 /* kmain(start_info) */
    call kmain
3:  cli
    hlt
    jmp 3b
    "#,
    options(att_syntax)
);
