package snp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// DefaultSevGuestDevice is the Linux SEV-SNP guest device.
const DefaultSevGuestDevice = "/dev/sev-guest"

// DeviceReporter obtains extended reports (report and certificate table) through the SNP_GET_EXT_REPORT
// ioctl of the Linux sev-guest driver. Prefer [ConfigFSReporter] on kernels that have configfs-tsm.
type DeviceReporter struct {
	// Path is the device; empty means DefaultSevGuestDevice.
	Path string
	// VMPL is the VMPL to request the report at.
	VMPL uint32

	open func(path string) (guestDevice, error) // nil means the real device
}

// Linux UAPI of the sev-guest driver (include/uapi/linux/sev-guest.h).
const (
	pageSize = 4096
	// snpGetExtReport is SNP_GET_EXT_REPORT: _IOWR('S', 0x2, struct snp_guest_request_ioctl).
	snpGetExtReport uintptr = 3<<30 | 32<<16 | 'S'<<8 | 0x2
	// vmmErrInvalidLen is the VMM error when the certificate buffer is too small; the driver then returns
	// the needed size in certs_len.
	vmmErrInvalidLen = 1
	// maxCertBuffer bounds the certificate buffer a host may ask for.
	maxCertBuffer = 64 * pageSize
	// msgReportRspHeader is the size of MSG_REPORT_RSP before the report: status, report size, reserved.
	msgReportRspHeader = 0x20
)

// snpReportReq is struct snp_report_req.
type snpReportReq struct {
	UserData [ReportDataSize]byte
	VMPL     uint32
	_        [28]byte
}

// snpExtReportReq is struct snp_ext_report_req.
type snpExtReportReq struct {
	Data         snpReportReq
	CertsAddress uint64
	CertsLen     uint32
	_            uint32
}

// snpReportResp is struct snp_report_resp.
type snpReportResp struct {
	Data [4000]byte
}

// snpGuestRequestIoctl is struct snp_guest_request_ioctl.
type snpGuestRequestIoctl struct {
	MsgVersion uint8
	_          [7]byte
	ReqData    uint64
	RespData   uint64
	ExitInfo2  uint64 // firmware error in the low 32 bits, VMM error in the high 32 bits
}

// guestDevice issues SNP_GET_EXT_REPORT.
type guestDevice interface {
	// extReport requests a report with the given REPORT_DATA at vmpl, with certs as certificate buffer. It
	// returns the response message, the certificate length the driver reported, the exit information and
	// the ioctl error.
	extReport(reportData [ReportDataSize]byte, vmpl uint32, certs []byte) (resp *snpReportResp, certsLen uint32, exitInfo2 uint64, err error)
	Close() error
}

// Report implements Reporter.
func (d *DeviceReporter) Report(ctx context.Context, reportData [ReportDataSize]byte) (*Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := d.Path
	if path == "" {
		path = DefaultSevGuestDevice
	}
	open := d.open
	if open == nil {
		open = openGuestDevice
	}
	dev, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer dev.Close()

	certs := make([]byte, 4*pageSize)
	for attempt := 0; ; attempt++ {
		resp, certsLen, exitInfo2, err := dev.extReport(reportData, d.VMPL, certs)
		if err != nil {
			vmmErr := uint32(exitInfo2 >> 32)
			if vmmErr == vmmErrInvalidLen && attempt < 2 && int(certsLen) > len(certs) && certsLen <= maxCertBuffer {
				certs = make([]byte, (int(certsLen)+pageSize-1)/pageSize*pageSize)
				continue
			}
			return nil, fmt.Errorf("%s: SNP_GET_EXT_REPORT: %w (firmware error 0x%x, VMM error 0x%x)", path, err, uint32(exitInfo2), vmmErr)
		}
		raw, err := reportFromResponse(resp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		report, err := ParseReport(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if report.ReportData != reportData {
			return nil, fmt.Errorf("%s: the report does not carry the requested REPORT_DATA", path)
		}
		ev := &Evidence{Report: raw}
		if !isZero(certs) {
			ev.CertTable = certs
		}
		return ev, nil
	}
}

// reportFromResponse extracts the report from a MSG_REPORT_RSP message.
func reportFromResponse(resp *snpReportResp) ([]byte, error) {
	if resp == nil {
		return nil, errors.New("no response")
	}
	status := binary.LittleEndian.Uint32(resp.Data[0:])
	size := binary.LittleEndian.Uint32(resp.Data[4:])
	if status != 0 {
		return nil, fmt.Errorf("firmware rejected the report request with status 0x%x", status)
	}
	if size != ReportSize {
		return nil, fmt.Errorf("%w: firmware returned a report of %d bytes, want %d", ErrMalformedReport, size, ReportSize)
	}
	return append([]byte(nil), resp.Data[msgReportRspHeader:msgReportRspHeader+ReportSize]...), nil
}
