package snp

import (
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

type linuxGuestDevice struct {
	f *os.File
}

func openGuestDevice(path string) (guestDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &linuxGuestDevice{f: f}, nil
}

func (d *linuxGuestDevice) Close() error { return d.f.Close() }

func (d *linuxGuestDevice) extReport(reportData [ReportDataSize]byte, vmpl uint32, certs []byte) (*snpReportResp, uint32, uint64, error) {
	// The driver reads the request and writes the response and certificates through the addresses in
	// the ioctl structures: keep them pinned for the duration of the call.
	var pinner runtime.Pinner
	defer pinner.Unpin()
	req := &snpExtReportReq{Data: snpReportReq{UserData: reportData, VMPL: vmpl}}
	if len(certs) > 0 {
		pinner.Pin(&certs[0])
		req.CertsAddress = uint64(uintptr(unsafe.Pointer(&certs[0])))
		req.CertsLen = uint32(len(certs))
	}
	resp := &snpReportResp{}
	pinner.Pin(req)
	pinner.Pin(resp)
	ioc := &snpGuestRequestIoctl{
		MsgVersion: 1,
		ReqData:    uint64(uintptr(unsafe.Pointer(req))),
		RespData:   uint64(uintptr(unsafe.Pointer(resp))),
	}
	pinner.Pin(ioc)
	conn, err := d.f.SyscallConn()
	if err != nil {
		return nil, 0, 0, err
	}
	var errno syscall.Errno
	if err := conn.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, snpGetExtReport, uintptr(unsafe.Pointer(ioc)))
	}); err != nil {
		return nil, 0, 0, err
	}
	if errno != 0 {
		return nil, req.CertsLen, ioc.ExitInfo2, errno
	}
	return resp, req.CertsLen, ioc.ExitInfo2, nil
}
