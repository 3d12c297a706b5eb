package kmip

import "fmt"

// SetAttemptHook installs f, called after every failed attempt of a request with the attempt number (from 1) and
// its error. It must be set before the client is used.
func SetAttemptHook(c *Client, f func(attempt int, err error)) { c.onAttempt = f }

// NegotiatedVersion returns the KMIP version of the current connection, or "" if not connected.
func NegotiatedVersion(c *Client) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kc == nil {
		return ""
	}
	v := c.kc.Version()
	return fmt.Sprintf("%d.%d", v.ProtocolVersionMajor, v.ProtocolVersionMinor)
}
