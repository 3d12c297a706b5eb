//go:build !linux

package guest

import (
	"context"
	"errors"
	"log/slog"
)

// Prepare readies a Linux machine for the node's first process; there is nothing to prepare elsewhere.
func Prepare(context.Context, *slog.Logger) (*Client, string, string, error) {
	return nil, "", "", errors.New("a QEMU provider node runs Linux")
}
