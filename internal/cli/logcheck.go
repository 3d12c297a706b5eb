package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
)

func newImageLogCheckCmd() *cobra.Command {
	var checkpointPath, logURL, tilesDir string
	var save bool
	cmd := &cobra.Command{
		Use:   "log-check --checkpoint FILE (--log-url URL | --tiles DIR) [--save]",
		Short: "Check that the transparency log still holds every entry of a checkpoint you kept",
		Long: "Read the log's current checkpoint (from a c2sp.org/tlog-tiles log at --log-url, or from a copy of its\n" +
			"files in --tiles), verify it and the checkpoint in --checkpoint against the key and origin of a trusted\n" +
			"log, and prove from the log's tiles that the current tree extends the older one: no entry the older\n" +
			"checkpoint covered was changed, removed or reordered. A log that was rewritten, forked or rolled back\n" +
			"fails (exit 1). With --save the current checkpoint replaces the file once it verified (a file that does\n" +
			"not exist yet is created from the current checkpoint: keep it for the next check).\n\n" + trustText,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (logURL == "") == (tilesDir == "") {
				return badInput("pass exactly one of --log-url and --tiles")
			}
			var lr signed.LogReader = signed.DirLog(tilesDir)
			if logURL != "" {
				u, err := url.Parse(logURL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return badInput("--log-url %q is not an http(s) URL", logURL)
				}
				lr = httpLog{ctx: cmd.Context(), base: strings.TrimSuffix(logURL, "/")}
			}
			roots, err := trustedRoots(cmd)
			if err != nil {
				return err
			}
			return logCheck(cmd, roots, checkpointPath, lr, save)
		},
	}
	cmd.Flags().StringVar(&checkpointPath, "checkpoint", "", "a checkpoint of the log you kept (signed note)")
	cmd.Flags().StringVar(&logURL, "log-url", "", "base URL of the log's checkpoint and tiles")
	cmd.Flags().StringVar(&tilesDir, "tiles", "", "a directory with the log's checkpoint and tiles")
	cmd.Flags().BoolVar(&save, "save", false, "replace the --checkpoint file with the log's current checkpoint once it verified")
	cmd.Flags().String("trusted-root", defaultTrustedRoot(), trustedRootUsage)
	_ = cmd.MarkFlagRequired("checkpoint")
	return cmd
}

// logCheck verifies the log's current checkpoint and its consistency with the one in checkpointPath.
func logCheck(cmd *cobra.Command, roots []signed.Root, checkpointPath string, lr signed.LogReader, save bool) error {
	out := cmd.OutOrStdout()
	rawNew, err := lr.ReadFile(signed.CheckpointPath)
	if err != nil {
		return failed(fmt.Errorf("reading the log's current checkpoint: %w", err))
	}
	rawOld, err := os.ReadFile(checkpointPath)
	first := errors.Is(err, fs.ErrNotExist) && save
	if err != nil && !first {
		return badInput("reading the kept checkpoint: %w (pass --save to keep the log's current one as the first)", err)
	}
	origin := signed.CheckpointOrigin(rawOld)
	if first {
		origin = signed.CheckpointOrigin(rawNew)
	}
	log, ok := logOf(roots, origin)
	if !ok {
		return checkFailed(fmt.Errorf("the checkpoint is of log %q, which no trusted root names (trusted logs: %s)", origin, logOrigins(roots)))
	}
	newer, err := signed.ParseCheckpoint(log, rawNew)
	if err != nil {
		return checkFailed(fmt.Errorf("the log's current checkpoint: %w", err))
	}
	if first {
		fmt.Fprintf(out, "log %s: current checkpoint of %d entries (root hash %s) verified; no older checkpoint to compare\n", log.Origin, newer.Size, newer.Hash)
		return saveCheckpoint(out, checkpointPath, newer)
	}
	older, err := signed.ParseCheckpoint(log, rawOld)
	if err != nil {
		return checkFailed(fmt.Errorf("%s: %w", checkpointPath, err))
	}
	fmt.Fprintf(out, "log %s\n  kept checkpoint:    %d entries, root hash %s\n  current checkpoint: %d entries, root hash %s\n",
		log.Origin, older.Size, older.Hash, newer.Size, newer.Hash)
	if err := signed.Consistent(older, newer, lr); err != nil {
		fmt.Fprintln(out, "  consistency: FAILED")
		return checkFailed(err)
	}
	if newer.Size == older.Size {
		fmt.Fprintf(out, "  consistency: proven, the log has not grown since and signed the same tree\n")
	} else {
		fmt.Fprintf(out, "  consistency: proven, the current tree of %d entries extends the kept tree of %d entries\n", newer.Size, older.Size)
	}
	if !save {
		return nil
	}
	return saveCheckpoint(out, checkpointPath, newer)
}

func saveCheckpoint(out io.Writer, path string, c *signed.Checkpoint) error {
	if err := atomicfile.Write(path, c.Raw, 0o644); err != nil {
		return failed(fmt.Errorf("saving the checkpoint: %w", err))
	}
	fmt.Fprintf(out, "  saved the current checkpoint to %s\n", path)
	return nil
}

// logOf returns the trusted log with the origin.
func logOf(roots []signed.Root, origin string) (signed.Log, bool) {
	for _, r := range roots {
		if r.Log.Origin == origin && origin != "" {
			return r.Log, true
		}
	}
	return signed.Log{}, false
}

func logOrigins(roots []signed.Root) string {
	var o []string
	for _, r := range roots {
		o = append(o, r.Log.Origin)
	}
	return strings.Join(o, ", ")
}

// httpLog reads a tiled log's files over HTTP (a static server or a CDN in front of the log's storage).
type httpLog struct {
	ctx  context.Context
	base string
}

// maxLogFile bounds a file read from a log: a tile is 8 KiB, a checkpoint a few hundred bytes.
const maxLogFile = 64 << 10

var logClient = &http.Client{Timeout: 30 * time.Second}

func (h httpLog) ReadFile(path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(h.ctx, http.MethodGet, h.base+"/"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := logClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s: %w", req.URL, fs.ErrNotExist)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxLogFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.URL, err)
	}
	if len(data) > maxLogFile {
		return nil, fmt.Errorf("%s: more than %d bytes", req.URL, maxLogFile)
	}
	return data, nil
}
