package launch

import "encoding/binary"

// Offsets in the VMSA (the SEV-ES save area, AMD64 Architecture Programmer's Manual volume 2, table B-4, as
// KVM fills it in for QEMU).
const (
	vmsaES           = 0x000 // segment registers: selector (16), attributes (16), limit (32), base (64)
	vmsaCS           = 0x010
	vmsaSS           = 0x020
	vmsaDS           = 0x030
	vmsaFS           = 0x040
	vmsaGS           = 0x050
	vmsaGDTR         = 0x060
	vmsaLDTR         = 0x070
	vmsaIDTR         = 0x080
	vmsaTR           = 0x090
	vmsaEFER         = 0x0d0
	vmsaCR4          = 0x148
	vmsaCR0          = 0x158
	vmsaDR7          = 0x160
	vmsaDR6          = 0x168
	vmsaRFLAGS       = 0x170
	vmsaRIP          = 0x178
	vmsaGPAT         = 0x268
	vmsaRDX          = 0x310
	vmsaSEVFeatures  = 0x3b0
	vmsaXCR0         = 0x3e8
	vmsaMXCSR        = 0x408 // 32 bits
	vmsaX87FCW       = 0x410 // 16 bits
	bspResetEIP      = 0xfffffff0
	vmsaPATDefault   = 0x0007040600070406 // the PAT MSR's reset value
	vmsaEFERSVME     = 0x1000             // KVM sets EFER.SVME
	vmsaCR4MCE       = 0x40               // KVM sets CR4.MCE
	vmsaCR0ET        = 0x10
	vmsaDR6Reset     = 0xffff0ff0
	vmsaDR7Reset     = 0x400
	vmsaMXCSRReset   = 0x1f80
	vmsaX87FCWReset  = 0x37f
	segDataRW        = 0x93 // present, data, read/write, accessed
	segCodeRX        = 0x9b // present, code, read/execute, accessed
	segLDT           = 0x82
	segTSSBusy       = 0x8b
	segRealModeLimit = 0xffff
)

// vmsaPage returns the initial VMSA of a vCPU that QEMU/KVM starts at eip (real mode: CS selector 0xF000,
// CS base the upper half of eip, RIP its lower half), with the vCPU signature in RDX and the guest features
// in SEV_FEATURES.
func vmsaPage(eip, signature uint32, features uint64) *[PageSize]byte {
	var p [PageSize]byte
	seg := func(off int, selector, attrib uint16, limit uint32, base uint64) {
		binary.LittleEndian.PutUint16(p[off:], selector)
		binary.LittleEndian.PutUint16(p[off+2:], attrib)
		binary.LittleEndian.PutUint32(p[off+4:], limit)
		binary.LittleEndian.PutUint64(p[off+8:], base)
	}
	u64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }
	seg(vmsaES, 0, segDataRW, segRealModeLimit, 0)
	seg(vmsaCS, 0xf000, segCodeRX, segRealModeLimit, uint64(eip&0xffff0000))
	seg(vmsaSS, 0, segDataRW, segRealModeLimit, 0)
	seg(vmsaDS, 0, segDataRW, segRealModeLimit, 0)
	seg(vmsaFS, 0, segDataRW, segRealModeLimit, 0)
	seg(vmsaGS, 0, segDataRW, segRealModeLimit, 0)
	seg(vmsaGDTR, 0, 0, segRealModeLimit, 0)
	seg(vmsaLDTR, 0, segLDT, segRealModeLimit, 0)
	seg(vmsaIDTR, 0, 0, segRealModeLimit, 0)
	seg(vmsaTR, 0, segTSSBusy, segRealModeLimit, 0)
	u64(vmsaEFER, vmsaEFERSVME)
	u64(vmsaCR4, vmsaCR4MCE)
	u64(vmsaCR0, vmsaCR0ET)
	u64(vmsaDR7, vmsaDR7Reset)
	u64(vmsaDR6, vmsaDR6Reset)
	u64(vmsaRFLAGS, 0x2)
	u64(vmsaRIP, uint64(eip&0xffff))
	u64(vmsaGPAT, vmsaPATDefault)
	u64(vmsaRDX, uint64(signature))
	u64(vmsaSEVFeatures, features)
	u64(vmsaXCR0, 0x1)
	binary.LittleEndian.PutUint32(p[vmsaMXCSR:], vmsaMXCSRReset)
	binary.LittleEndian.PutUint16(p[vmsaX87FCW:], vmsaX87FCWReset)
	return &p
}
