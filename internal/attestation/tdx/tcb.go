package tdx

import (
	"fmt"
	"strings"
	"time"
)

// TCBEvaluation is the TCB status of a verified quote, computed from Intel's collateral.
type TCBEvaluation struct {
	// Status is the overall status the policy decides on: the platform status, lowered by the TDX module
	// and quoting enclave statuses (for example, an up-to-date platform with an out-of-date QE is
	// OutOfDate).
	Status TCBStatus
	// Platform is the status of the first TCB info level the platform matches, or NotSupported.
	Platform TCBStatus
	// Module is the status of the TDX module identity level; empty when the TCB info's own levels cover the
	// module (TEE_TCB_SVN[1] == 0).
	Module TCBStatus
	// QE is the status of the quoting enclave's level in the QE identity, or NotSupported.
	QE TCBStatus
	// TCBDate is the date of the matching platform level.
	TCBDate time.Time
	// AdvisoryIDs are the Intel security advisories of the matching levels.
	AdvisoryIDs []string
	// TCBEvaluationDataNumber is the lower evaluation data number of the TCB info and the QE identity.
	TCBEvaluationDataNumber int
	// Reason explains a NotSupported status: which level compared how.
	Reason string
}

// platformTCB is what TCB levels are compared with: the PCK certificate's SGX TCB and the quote's TEE TCB
// SVN.
type platformTCB struct {
	sgxComponents [16]byte
	pcesvn        uint16
	teeTCBSVN     [16]byte
}

// matchPlatformLevel returns the first level of levels the platform's TCB is at or above, per Intel's
// algorithm: every SGX TCB component of the PCK certificate >= the level's, the PCESVN >= the level's, and
// every TEE TCB SVN component >= the level's tdxtcbcomponents (components 0 and 1 excluded when
// TEE_TCB_SVN[1] > 0: the TDX module identity covers them). Values are compared as numbers, component by
// component. It returns -1 and the reason when no level matches.
func matchPlatformLevel(levels []TCBLevel, p platformTCB) (int, string) {
	var reasons []string
	for i, l := range levels {
		why := compareLevel(l, p)
		if why == "" {
			return i, ""
		}
		reasons = append(reasons, fmt.Sprintf("level %d (%s, %s): %s", i, l.Status, l.TCBDate.UTC().Format(time.DateOnly), why))
	}
	return -1, "no TCB level of the TCB info matches the platform: " + strings.Join(reasons, "; ")
}

// compareLevel returns "" if p is at or above level l, or the first component that is below.
func compareLevel(l TCBLevel, p platformTCB) string {
	for i := range p.sgxComponents {
		if p.sgxComponents[i] < l.SGXComponents[i] {
			return fmt.Sprintf("PCK SGX TCB component %d is %d, the level needs %d", i+1, p.sgxComponents[i], l.SGXComponents[i])
		}
	}
	if p.pcesvn < l.PCESVN {
		return fmt.Sprintf("PCK PCESVN is %d, the level needs %d", p.pcesvn, l.PCESVN)
	}
	start := 0
	if p.teeTCBSVN[1] > 0 {
		start = 2
	}
	for i := start; i < len(p.teeTCBSVN); i++ {
		if p.teeTCBSVN[i] < l.TDXComponents[i] {
			return fmt.Sprintf("TEE_TCB_SVN[%d] is %d, the level needs %d", i, p.teeTCBSVN[i], l.TDXComponents[i])
		}
	}
	return ""
}

// matchSVNLevel returns the first level whose ISV SVN is at most svn, or -1.
func matchSVNLevel(levels []SVNLevel, svn uint16) int {
	for i, l := range levels {
		if svn >= l.ISVSVN {
			return i
		}
	}
	return -1
}

// evaluatePlatform computes the platform and TDX module statuses for one TEE TCB SVN. It fails when the TDX
// module does not have the identity the TCB info requires.
func evaluatePlatform(info *TCBInfo, p platformTCB, body *TDReport) (TCBEvaluation, error) {
	ev := TCBEvaluation{TCBEvaluationDataNumber: info.TCBEvaluationDataNumber}
	i, reason := matchPlatformLevel(info.TCBLevels, p)
	if i < 0 {
		ev.Platform, ev.Reason = TCBStatusNotSupported, reason
		ev.Status = TCBStatusNotSupported
		return ev, nil
	}
	level := info.TCBLevels[i]
	ev.Platform, ev.TCBDate = level.Status, level.TCBDate
	ev.AdvisoryIDs = append(ev.AdvisoryIDs, level.AdvisoryIDs...)
	// The matching level must be for the TDX module major version the quote reports.
	if level.TDXComponents[1] != p.teeTCBSVN[1] {
		ev.Platform, ev.Status = TCBStatusNotSupported, TCBStatusNotSupported
		ev.Reason = fmt.Sprintf("TCB level %d is for TDX module major version %d, the quote's TEE_TCB_SVN[1] is %d", i, level.TDXComponents[1], p.teeTCBSVN[1])
		return ev, nil
	}
	ev.Status = ev.Platform
	if p.teeTCBSVN[1] == 0 {
		return ev, nil
	}
	id := fmt.Sprintf("TDX_%02X", p.teeTCBSVN[1])
	var mod *TDXModuleIdentity
	for k := range info.TDXModuleIdentities {
		if strings.EqualFold(info.TDXModuleIdentities[k].ID, id) {
			mod = &info.TDXModuleIdentities[k]
			break
		}
	}
	if mod == nil {
		ev.Module, ev.Status = TCBStatusNotSupported, TCBStatusNotSupported
		ev.Reason = fmt.Sprintf("the TCB info has no TDX module identity %s for the quote's TEE_TCB_SVN[1]", id)
		return ev, nil
	}
	if err := checkModule(mod.TDXModule, body, "TDX module identity "+mod.ID); err != nil {
		return ev, err
	}
	j := matchSVNLevel(mod.TCBLevels, uint16(p.teeTCBSVN[0]))
	if j < 0 {
		ev.Module, ev.Status = TCBStatusNotSupported, TCBStatusNotSupported
		ev.Reason = fmt.Sprintf("no TCB level of TDX module identity %s matches TEE_TCB_SVN[0] = %d", mod.ID, p.teeTCBSVN[0])
		return ev, nil
	}
	ev.Module = mod.TCBLevels[j].Status
	ev.AdvisoryIDs = append(ev.AdvisoryIDs, mod.TCBLevels[j].AdvisoryIDs...)
	ev.Status = lowerBy(ev.Status, ev.Module)
	return ev, nil
}

// checkModule checks the quote's TDX module signer and attributes against an identity of the TCB info.
func checkModule(m TDXModule, body *TDReport, what string) error {
	if m.MRSigner != body.MRSignerSEAM {
		return fmt.Errorf("%w: TDX module signer MRSIGNERSEAM %x is not the one of the %s (%x)", ErrCollateralMismatch, body.MRSignerSEAM, what, m.MRSigner)
	}
	for i := range m.Attributes {
		if body.SEAMAttributes[i]&m.AttributesMask[i] != m.Attributes[i] {
			return fmt.Errorf("%w: TDX module attributes SEAMATTRIBUTES %x do not match the %s (%x under mask %x)", ErrCollateralMismatch, body.SEAMAttributes, what, m.Attributes, m.AttributesMask)
		}
	}
	return nil
}

// lowerBy combines a platform status with the status of a component that has only UpToDate, OutOfDate or
// Revoked levels (the TDX module, the quoting enclave), as Intel's quote verification does: a revoked
// component revokes, an out-of-date component makes an up-to-date platform out of date and a platform
// that needs configuration out of date and needing configuration.
func lowerBy(platform, component TCBStatus) TCBStatus {
	switch {
	case platform == TCBStatusNotSupported || component == TCBStatusNotSupported:
		return TCBStatusNotSupported
	case platform == TCBStatusRevoked || component == TCBStatusRevoked:
		return TCBStatusRevoked
	case component == TCBStatusUpToDate:
		return platform
	case component == TCBStatusOutOfDate || component == TCBStatusOutOfDateConfigurationNeeded:
		switch platform {
		case TCBStatusConfigurationNeeded, TCBStatusConfigurationAndSWHardeningNeeded, TCBStatusOutOfDateConfigurationNeeded:
			return TCBStatusOutOfDateConfigurationNeeded
		default:
			return TCBStatusOutOfDate
		}
	}
	// Statuses Intel does not use for these components: the worse of the two.
	if severity(component) > severity(platform) {
		return component
	}
	return platform
}

// severity orders statuses from best to worst, to pick the worse of two evaluations.
func severity(s TCBStatus) int {
	switch s {
	case TCBStatusUpToDate:
		return 0
	case TCBStatusSWHardeningNeeded:
		return 1
	case TCBStatusConfigurationNeeded:
		return 2
	case TCBStatusConfigurationAndSWHardeningNeeded:
		return 3
	case TCBStatusOutOfDate:
		return 4
	case TCBStatusOutOfDateConfigurationNeeded:
		return 5
	case TCBStatusRevoked:
		return 6
	default:
		return 7
	}
}

// evaluateTCB computes the TCB status of a quote whose PCK certificate carries pck, against info and the
// QE identity. For a TD report 1.5 with a non-zero TEE_TCB_SVN_2, both TEE TCB SVNs are evaluated and the
// worse result counts.
func evaluateTCB(info *TCBInfo, qe *QEIdentity, pck *PCKInfo, q *Quote) (TCBEvaluation, error) {
	p := platformTCB{sgxComponents: pck.TCBComponents, pcesvn: pck.PCESVN, teeTCBSVN: q.Body.TEETCBSVN}
	ev, err := evaluatePlatform(info, p, &q.Body)
	if err != nil {
		return ev, err
	}
	if q.BodyType == BodyTypeTDReport15 && q.Body.TEETCBSVN2 != [16]byte{} {
		p.teeTCBSVN = q.Body.TEETCBSVN2
		ev2, err := evaluatePlatform(info, p, &q.Body)
		if err != nil {
			return ev, fmt.Errorf("TEE_TCB_SVN_2: %w", err)
		}
		if severity(ev2.Status) > severity(ev.Status) {
			ev = ev2
			if ev.Reason != "" {
				ev.Reason = "TEE_TCB_SVN_2: " + ev.Reason
			}
		}
	}

	if qe.TCBEvaluationDataNumber < ev.TCBEvaluationDataNumber {
		ev.TCBEvaluationDataNumber = qe.TCBEvaluationDataNumber
	}
	k := matchSVNLevel(qe.TCBLevels, q.QEReport.ISVSVN)
	if k < 0 {
		ev.QE = TCBStatusNotSupported
		if ev.Status != TCBStatusNotSupported {
			ev.Reason = fmt.Sprintf("no TCB level of the QE identity matches the QE's ISVSVN %d", q.QEReport.ISVSVN)
		}
	} else {
		ev.QE = qe.TCBLevels[k].Status
		ev.AdvisoryIDs = append(ev.AdvisoryIDs, qe.TCBLevels[k].AdvisoryIDs...)
	}
	ev.Status = lowerBy(ev.Status, ev.QE)
	return ev, nil
}
