//go:build !linux

package snp

import "errors"

func openGuestDevice(string) (guestDevice, error) {
	return nil, errors.New("the SEV-SNP guest device exists only on Linux")
}
