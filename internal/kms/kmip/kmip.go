// Package kmip is a client of an external key management server (KMS/HSM) over KMIP 1.2 to 1.4 with mutual TLS.
// It keeps a key-encryption key (KEK) on the KMS and wraps and unwraps secrets with it: the KMS performs AES-256-GCM
// itself (KMIP Encrypt/Decrypt), so the KEK never leaves it. Wrap and Unwrap need KMIP 1.4 or later, the first
// version with Authenticated Encryption Additional Data and Tag.
//
// Errors can be tested with errors.Is against ErrUnreachable, ErrAuthentication, ErrKeyNotFound, ErrKeyNotUsable
// and ErrIntegrity. No plaintext or key material is ever put into an error.
package kmip

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"
)

// Sentinel errors, for errors.Is.
var (
	// ErrUnreachable: the KMS could not be reached (connection refused, timeout, reset), after all retries.
	ErrUnreachable = errors.New("kmip: KMS unreachable")
	// ErrAuthentication: mutual TLS failed (the KMS rejected the client certificate, or the server certificate is
	// not trusted) or the KMS rejected the client's identity. Never retried.
	ErrAuthentication = errors.New("kmip: authentication with KMS failed")
	// ErrKeyNotFound: the KMS has no key with that ID (or does not reveal it to this client).
	ErrKeyNotFound = errors.New("kmip: key not found")
	// ErrKeyNotUsable: the key exists but may not be used for the operation (not active: revoked, destroyed,
	// pre-active; or its usage mask or access policy forbids it).
	ErrKeyNotUsable = errors.New("kmip: key not usable")
	// ErrIntegrity: the KMS could not authenticate the wrapped secret (AES-GCM tag mismatch): the ciphertext, IV,
	// tag or additional data was altered, or it was wrapped under another key.
	ErrIntegrity = errors.New("kmip: wrapped secret failed authentication")
)

// Config configures a Client.
type Config struct {
	Endpoint   string        // host:port
	ServerCA   []byte        // PEM: CA that signed the KMS server certificate
	ClientCert []byte        // PEM client certificate (mutual TLS)
	ClientKey  []byte        // PEM client key
	Timeout    time.Duration // per attempt, default 10s
	Retries    int           // attempts for transient failures (connection refused, timeout, reset), default 5
}

// Defaults and bounds of the retry policy.
const (
	DefaultTimeout = 10 * time.Second
	DefaultRetries = 5
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 2 * time.Second
)

// Validate checks that all fields are present and well-formed. Zero Timeout and Retries mean the defaults.
func (c Config) Validate() error {
	_, err := c.tlsConfig()
	return err
}

func (c Config) tlsConfig() (*tls.Config, error) {
	var errs []error
	host, port, err := net.SplitHostPort(c.Endpoint)
	if n, perr := strconv.Atoi(port); c.Endpoint == "" {
		errs = append(errs, errors.New("missing Endpoint (want host:port)"))
	} else if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
		errs = append(errs, fmt.Errorf("malformed Endpoint %q (want host:port)", c.Endpoint))
	}
	pool := x509.NewCertPool()
	if len(c.ServerCA) == 0 {
		errs = append(errs, errors.New("missing ServerCA"))
	} else if err := addPEMCerts(pool, c.ServerCA); err != nil {
		errs = append(errs, fmt.Errorf("invalid ServerCA: %w", err))
	}
	var cert tls.Certificate
	switch {
	case len(c.ClientCert) == 0:
		errs = append(errs, errors.New("missing ClientCert"))
	case len(c.ClientKey) == 0:
		errs = append(errs, errors.New("missing ClientKey"))
	default:
		if cert, err = tls.X509KeyPair(c.ClientCert, c.ClientKey); err != nil {
			errs = append(errs, fmt.Errorf("invalid ClientCert/ClientKey: %w", err))
		}
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("negative Timeout %v", c.Timeout))
	}
	if c.Retries < 0 {
		errs = append(errs, fmt.Errorf("negative Retries %d", c.Retries))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("kmip: invalid config: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
		ServerName:   host,
	}, nil
}

func addPEMCerts(pool *x509.CertPool, data []byte) error {
	n := 0
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// Client is a KMIP client. It connects lazily, keeps one connection (re-established as needed) and is safe for
// concurrent use; requests are serialized on the connection.
type Client struct {
	cfg Config
	tls *tls.Config

	mu     sync.Mutex
	kc     *kmipclient.Client // nil until connected, and after a connection failure
	closed bool

	onAttempt func(attempt int, err error) // test hook: called after every failed attempt
}

// New returns a client for cfg. It does not connect yet.
func New(cfg Config) (*Client, error) {
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultRetries
	}
	return &Client{cfg: cfg, tls: tlsCfg}, nil
}

// Close closes the connection. Later calls fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.kc == nil {
		return nil
	}
	closeConn(c.kc)
	c.kc = nil
	return nil
}

// CreateKEK creates an AES-256 key on the KMS, with usage mask Encrypt|Decrypt and the Name attribute name, activates
// it, and returns its unique identifier.
func (c *Client) CreateKEK(ctx context.Context, name string) (string, error) {
	if name == "" {
		return "", errors.New("kmip: create KEK: empty name")
	}
	create := &payloads.CreateRequestPayload{
		ObjectType: kmip.ObjectTypeSymmetricKey,
		TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
			{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}},
		}},
	}
	res, err := c.request(ctx, create)
	if err != nil {
		return "", fmt.Errorf("kmip: create KEK %q: %w", name, err)
	}
	created, ok := res.(*payloads.CreateResponsePayload)
	if !ok || created.UniqueIdentifier == "" {
		return "", fmt.Errorf("kmip: create KEK %q: KMS returned no key ID", name)
	}
	// A separate request: pykmip cannot parse an Activate without ID (meant for the ID placeholder) in a batch.
	if _, err := c.request(ctx, &payloads.ActivateRequestPayload{UniqueIdentifier: created.UniqueIdentifier}); err != nil {
		return "", fmt.Errorf("kmip: create KEK %q: key %s was created but not activated: %w", name, created.UniqueIdentifier, err)
	}
	return created.UniqueIdentifier, nil
}

// Wrap encrypts plaintext on the KMS under the KEK keyID with AES-256-GCM: a fresh random 96-bit IV (generated
// here), aad as additional authenticated data, a 128-bit tag.
func (c *Client) Wrap(ctx context.Context, keyID string, plaintext, aad []byte) (*Wrapped, error) {
	if keyID == "" {
		return nil, errors.New("kmip: wrap: empty key ID")
	}
	if len(plaintext) == 0 {
		return nil, errors.New("kmip: wrap: empty plaintext")
	}
	iv := make([]byte, IVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("kmip: wrap: generate IV: %w", err)
	}
	res, err := c.request(ctx, &payloads.EncryptRequestPayload{
		UniqueIdentifier:                      keyID,
		CryptographicParameters:               gcmParams(),
		Data:                                  plaintext,
		IVCounterNonce:                        iv,
		AuthenticatedEncryptionAdditionalData: aad,
	})
	if err != nil {
		return nil, fmt.Errorf("kmip: wrap with key %s: %w", keyID, err)
	}
	enc, ok := res.(*payloads.EncryptResponsePayload)
	switch {
	case !ok:
		err = fmt.Errorf("unexpected response %T", res)
	case enc.UniqueIdentifier != keyID:
		err = fmt.Errorf("KMS answered for key %q", enc.UniqueIdentifier)
	case len(enc.IVCounterNonce) != 0 && !bytes.Equal(enc.IVCounterNonce, iv):
		err = errors.New("KMS used another IV than the one sent")
	case len(enc.Data) != len(plaintext):
		err = fmt.Errorf("KMS returned %d bytes of ciphertext for %d bytes of plaintext", len(enc.Data), len(plaintext))
	case len(enc.AuthenticatedEncryptionTag) != TagSize:
		err = fmt.Errorf("KMS returned a %d-byte tag (want %d)", len(enc.AuthenticatedEncryptionTag), TagSize)
	}
	if err != nil {
		return nil, fmt.Errorf("kmip: wrap with key %s: %w", keyID, err)
	}
	return &Wrapped{
		Version:    WrappedVersion,
		Algorithm:  AlgorithmAES256GCM,
		KeyID:      keyID,
		IV:         iv,
		Ciphertext: enc.Data,
		Tag:        enc.AuthenticatedEncryptionTag,
	}, nil
}

// Unwrap decrypts w on the KMS, authenticating aad. A wrapped secret that was tampered with, or aad that differs
// from the one given to Wrap, yields ErrIntegrity and no plaintext.
func (c *Client) Unwrap(ctx context.Context, w *Wrapped, aad []byte) ([]byte, error) {
	if err := w.validate(); err != nil {
		return nil, fmt.Errorf("kmip: unwrap: invalid wrapped secret: %w", err)
	}
	res, err := c.request(ctx, &payloads.DecryptRequestPayload{
		UniqueIdentifier:                      w.KeyID,
		CryptographicParameters:               gcmParams(),
		Data:                                  w.Ciphertext,
		IVCounterNonce:                        w.IV,
		AuthenticatedEncryptionAdditionalData: aad,
		AuthenticatedEncryptionTag:            w.Tag,
	})
	if err != nil {
		return nil, fmt.Errorf("kmip: unwrap with key %s: %w", w.KeyID, err)
	}
	dec, ok := res.(*payloads.DecryptResponsePayload)
	if !ok || len(dec.Data) != len(w.Ciphertext) {
		return nil, fmt.Errorf("kmip: unwrap with key %s: malformed response from KMS", w.KeyID)
	}
	return dec.Data, nil
}

// RevokeKEK revokes the KEK (reason: cessation of operation), so that it can no longer be used to wrap or unwrap.
func (c *Client) RevokeKEK(ctx context.Context, keyID string) error {
	if err := c.revoke(ctx, keyID); err != nil {
		return fmt.Errorf("kmip: revoke key %s: %w", keyID, err)
	}
	return nil
}

// DestroyKEK destroys the KEK, revoking it first if it is active. Every secret wrapped with it is lost.
func (c *Client) DestroyKEK(ctx context.Context, keyID string) error {
	// KMIP forbids destroying an active key. Revoking a key that is not active fails with ErrKeyNotUsable.
	if err := c.revoke(ctx, keyID); err != nil && !errors.Is(err, ErrKeyNotUsable) {
		return fmt.Errorf("kmip: destroy key %s: revoke: %w", keyID, err)
	}
	if _, err := c.request(ctx, &payloads.DestroyRequestPayload{UniqueIdentifier: keyID}); err != nil {
		return fmt.Errorf("kmip: destroy key %s: %w", keyID, err)
	}
	return nil
}

func (c *Client) revoke(ctx context.Context, keyID string) error {
	if keyID == "" {
		return errors.New("empty key ID")
	}
	_, err := c.request(ctx, &payloads.RevokeRequestPayload{
		UniqueIdentifier: keyID,
		RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation},
	})
	return err
}

func gcmParams() *kmip.CryptographicParameters {
	return &kmip.CryptographicParameters{
		CryptographicAlgorithm: kmip.CryptographicAlgorithmAES,
		BlockCipherMode:        kmip.BlockCipherModeGCM,
		TagLength:              TagSize,
	}
}

// request runs one operation, with retries and exponential backoff, and returns its response payload. Encrypt and
// Decrypt are retried after any transient failure (repeating them is harmless); other operations only if the
// connection could not be established, so that a request that may have reached the KMS is not sent again by this
// loop. (kmipclient itself resends a request once the connection is found closed, after reconnecting.)
func (c *Client) request(ctx context.Context, req kmip.OperationPayload) (kmip.OperationPayload, error) {
	op := req.Operation()
	idempotent := op == kmip.OperationEncrypt || op == kmip.OperationDecrypt
	backoff := backoffMin
	for attempt := 1; ; attempt++ {
		res, err := c.attempt(ctx, req)
		if err == nil {
			return res, nil
		}
		if c.onAttempt != nil {
			c.onAttempt(attempt, err)
		}
		var de *dialError
		switch {
		case ctx.Err() != nil:
			return nil, c.gaveUp(ctx, attempt, err)
		case !transient(err):
			return nil, err
		case !idempotent && !errors.As(err, &de):
			return nil, &kindError{ErrUnreachable, fmt.Sprintf("connection to KMS at %s lost during the request (not retried: the KMS may have executed it)", c.cfg.Endpoint), err}
		case attempt >= c.cfg.Retries:
			return nil, &kindError{ErrUnreachable, fmt.Sprintf("KMS at %s unreachable after %d attempts", c.cfg.Endpoint, attempt), err}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, c.gaveUp(ctx, attempt, err)
		case <-t.C:
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func (c *Client) gaveUp(ctx context.Context, attempts int, last error) error {
	return fmt.Errorf("KMS at %s: gave up after %d attempts (last error: %v): %w", c.cfg.Endpoint, attempts, last, ctx.Err())
}

// attempt sends req once, connecting first if needed.
func (c *Client) attempt(ctx context.Context, req kmip.OperationPayload) (kmip.OperationPayload, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	kc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	v := kc.Version()
	if op := req.Operation(); (op == kmip.OperationEncrypt || op == kmip.OperationDecrypt) && ttlv.CompareVersions(v, kmip.V1_4) < 0 {
		// Before 1.4, the additional data and the tag would silently be left out of the messages.
		return nil, fmt.Errorf("KMS at %s speaks KMIP %d.%d, AES-GCM with additional data needs KMIP 1.4", c.cfg.Endpoint, v.ProtocolVersionMajor, v.ProtocolVersionMinor)
	}
	res, err := kc.Batch(ctx, req)
	if err != nil {
		c.drop(kc)
		if isRemoteAlert(err) {
			return nil, &kindError{ErrAuthentication, fmt.Sprintf("KMS at %s rejected the TLS session", c.cfg.Endpoint), err}
		}
		return nil, err
	}
	if len(res) != 1 {
		return nil, fmt.Errorf("KMS returned %d results for 1 operation", len(res))
	}
	if err := resultErr(&res[0]); err != nil {
		return nil, err
	}
	return res[0].ResponsePayload, nil
}

// rejectUnauthenticated turns a KMIP-level authentication failure (e.g. pykmip's for a client certificate without
// extended key usage clientAuth) into ErrAuthentication, also during version negotiation, where kmipclient would
// otherwise return an untyped error.
func rejectUnauthenticated(next kmipclient.Next, ctx context.Context, req *kmip.RequestMessage) (*kmip.ResponseMessage, error) {
	resp, err := next(ctx, req)
	if err != nil {
		return nil, err
	}
	for i := range resp.BatchItem {
		if bi := &resp.BatchItem[i]; bi.ResultStatus != kmip.ResultStatusSuccess && bi.ResultReason == kmip.ResultReasonAuthenticationNotSuccessful {
			return nil, resultErr(bi)
		}
	}
	return resp, nil
}

// conn returns the connection, establishing it (TLS handshake and KMIP version negotiation) if needed.
func (c *Client) conn(ctx context.Context) (*kmipclient.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("kmip: client closed")
	}
	if c.kc != nil {
		return c.kc, nil
	}
	kc, err := kmipclient.DialContext(ctx, c.cfg.Endpoint,
		kmipclient.WithDialerUnsafe(c.dial), // does the TLS handshake itself, to classify its failures
		kmipclient.WithTlsConfig(c.tls.Clone()),
		kmipclient.WithKmipVersions(kmip.V1_4, kmip.V1_3, kmip.V1_2),
		kmipclient.WithMiddlewares(rejectUnauthenticated),
	)
	if err != nil {
		return nil, err
	}
	if v := kc.Version(); ttlv.CompareVersions(v, kmip.V1_2) < 0 || ttlv.CompareVersions(v, kmip.V1_4) > 0 {
		closeConn(kc)
		return nil, fmt.Errorf("KMS at %s negotiated unsupported KMIP version %d.%d", c.cfg.Endpoint, v.ProtocolVersionMajor, v.ProtocolVersionMinor)
	}
	c.kc = kc
	return kc, nil
}

// drop discards a connection that failed.
func (c *Client) drop(kc *kmipclient.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kc == kc {
		closeConn(kc)
		c.kc = nil
	}
}

// closeConn closes kc. kmipclient (v0.8.1) panics on Close after one of its internal reconnects failed, which leaves
// it without a connection, i.e. with nothing to close.
func closeConn(kc *kmipclient.Client) {
	defer func() { _ = recover() }()
	_ = kc.Close()
}

// dial connects and runs the TLS handshake. Handshake failures that are not network errors mean the peers do not
// trust each other: ErrAuthentication.
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", c.cfg.Endpoint)
	if err != nil {
		return nil, &dialError{err}
	}
	conn := tls.Client(raw, c.tls)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		if transient(err) {
			return nil, &dialError{err}
		}
		return nil, &kindError{ErrAuthentication, fmt.Sprintf("TLS handshake with KMS at %s failed; check that the KMS trusts the client certificate and that serverCA is the KMS's CA", c.cfg.Endpoint), err}
	}
	return conn, nil
}

// dialError marks a failure to establish a connection: nothing was sent, so any request can be retried.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// kindError is an error of one of the sentinel kinds, with its own message.
type kindError struct {
	kind error
	msg  string
	err  error
}

func (e *kindError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}
func (e *kindError) Is(target error) bool { return target == e.kind }
func (e *kindError) Unwrap() error        { return e.err }

// transient reports whether err is a network failure worth retrying.
func transient(err error) bool {
	var ke *kindError
	if errors.As(err, &ke) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, target := range []error{
		io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe, net.ErrClosed, os.ErrDeadlineExceeded, context.DeadlineExceeded,
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE, syscall.ETIMEDOUT,
		syscall.EHOSTUNREACH, syscall.ENETUNREACH,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// isRemoteAlert reports whether err is a TLS alert sent by the peer (e.g. "bad certificate", "unknown CA").
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// resultErr turns a failed KMIP batch item into an error of the matching kind. pykmip reports some failures with
// other reasons than the KMIP specification prescribes; the mapping covers both.
func resultErr(bi *kmip.ResponseBatchItem) error {
	if bi.ResultStatus == kmip.ResultStatusSuccess {
		return nil
	}
	op := "request"
	if bi.Operation != 0 {
		op = ttlv.EnumStr(bi.Operation)
	}
	msg := fmt.Sprintf("KMS: %s failed: %s", op, ttlv.EnumStr(bi.ResultReason))
	if bi.ResultMessage != "" {
		msg += ": " + bi.ResultMessage
	}
	var kind error
	switch bi.ResultReason {
	case kmip.ResultReasonItemNotFound:
		kind = ErrKeyNotFound
	case kmip.ResultReasonAuthenticationNotSuccessful:
		kind = ErrAuthentication
	case kmip.ResultReasonPermissionDenied, kmip.ResultReasonIllegalOperation:
		// pykmip: "must be in the Active state", "not active and cannot be revoked", usage mask, access policy.
		kind = ErrKeyNotUsable
	case kmip.ResultReasonCryptographicFailure, kmip.ResultReasonGeneralFailure:
		// KMIP 1.4 prescribes Cryptographic Failure for a tag mismatch; pykmip lets the InvalidTag exception
		// escape and answers General Failure. The request itself was validated here, so for Decrypt both mean
		// that the ciphertext did not authenticate.
		if bi.Operation == kmip.OperationDecrypt {
			kind = ErrIntegrity
		}
	}
	if kind == nil {
		return errors.New(msg)
	}
	if kind == ErrIntegrity {
		msg = "AES-GCM authentication of the wrapped secret failed (" + msg + ")"
	}
	return &kindError{kind: kind, msg: msg}
}
