#!/usr/bin/env python3
"""Boot Debian's AArch64 UEFI firmware (qemu-efi-aarch64) on QEMU's `virt`, let the UEFI shell
print the EFI system table (`dmem`, which names the ACPI 2.0 RSDP), then read RSDP -> XSDT -> the
table with the wanted signature out of guest physical memory with the QEMU monitor's `pmemsave`.
The bytes are exactly what the firmware hands an OS (installed and checksummed by the firmware
from QEMU's table blob)."""
import os, re, socket, subprocess, sys, struct, tempfile, time

def main():
    out, sig, machine_args = sys.argv[1], sys.argv[2].encode(), sys.argv[3:]
    work = tempfile.mkdtemp(prefix="iortcap")
    fw = os.path.join(work, "code.fd"); vars_ = os.path.join(work, "vars.fd")
    with open("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "rb") as f: code = f.read()
    with open(fw, "wb") as f: f.write(code.ljust(64 << 20, b"\0"))
    with open(vars_, "wb") as f: f.write(b"\0" * (64 << 20))
    disk = os.path.join(work, "disk.img")
    subprocess.run(["mkfs.fat", "-C", disk, "8192"], check=True, stdout=subprocess.DEVNULL)
    nsh = os.path.join(work, "startup.nsh")
    with open(nsh, "w") as f: f.write("dmem\r\necho CAPTURE-READY\r\n")
    subprocess.run(["mcopy", "-i", disk, nsh, "::/"], check=True)
    serial = os.path.join(work, "serial.log"); mon = os.path.join(work, "mon.sock")
    cmd = ["qemu-system-aarch64", *machine_args, "-m", "512M", "-nodefaults", "-display", "none",
           "-serial", "file:" + serial, "-monitor", "unix:%s,server,nowait" % mon,
           "-drive", "if=pflash,format=raw,readonly=on,file=" + fw,
           "-drive", "if=pflash,format=raw,file=" + vars_,
           "-drive", "if=none,id=d0,format=raw,file=" + disk, "-device", "virtio-blk-pci,drive=d0,bus=pcie.0"]
    print(" ".join(cmd), file=sys.stderr)
    q = subprocess.Popen(cmd)
    try:
        deadline = time.time() + 240
        text = ""
        while time.time() < deadline:
            time.sleep(1)
            text = open(serial, errors="replace").read() if os.path.exists(serial) else ""
            if text.count("CAPTURE-READY") >= 2: break   # the echo line and its output
        else:
            sys.exit("timeout waiting for the shell:\n" + text[-2000:])
        m = re.search(r"ACPI 2\.0 Table[^0-9A-Fa-f]*([0-9A-Fa-f]{8,16})", text, re.I) or \
            re.search(r"ACPI20[^0-9A-Fa-f]*([0-9A-Fa-f]{8,16})", text, re.I)
        if not m: sys.exit("no ACPI 2.0 table in dmem output:\n" + text[-3000:])
        rsdp_pa = int(m.group(1), 16)
        s = socket.socket(socket.AF_UNIX); s.connect(mon); s.settimeout(5)
        def hmp(c):
            s.sendall((c + "\n").encode()); time.sleep(0.5)
            try: s.recv(65536)
            except socket.timeout: pass
        def read(pa, n):
            p = os.path.join(work, "mem.bin")
            if os.path.exists(p): os.remove(p)
            hmp("pmemsave 0x%x %d \"%s\"" % (pa, n, p))
            for _ in range(50):
                if os.path.exists(p) and os.path.getsize(p) == n: break
                time.sleep(0.1)
            return open(p, "rb").read()
        rsdp = read(rsdp_pa, 36)
        assert rsdp[:8] == b"RSD PTR ", rsdp
        xsdt_pa = struct.unpack_from("<Q", rsdp, 24)[0]
        hdr = read(xsdt_pa, 36); assert hdr[:4] == b"XSDT", hdr
        xsdt = read(xsdt_pa, struct.unpack_from("<I", hdr, 4)[0])
        for off in range(36, len(xsdt), 8):
            pa = struct.unpack_from("<Q", xsdt, off)[0]
            h = read(pa, 36)
            print("XSDT entry %#x: %s" % (pa, h[:4]), file=sys.stderr)
            if h[:4] == sig:
                table = read(pa, struct.unpack_from("<I", h, 4)[0])
                assert sum(table) % 256 == 0, "checksum"
                open(out, "wb").write(table)
                print("wrote %s: %d bytes from %#x" % (out, len(table), pa), file=sys.stderr)
                hmp("quit")
                return
        sys.exit("no %s table" % sig)
    finally:
        try: q.wait(timeout=5)
        except subprocess.TimeoutExpired: q.kill()

main()
