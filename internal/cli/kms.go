package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
)

func newKMSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kms",
		Short: "Manage the master secret and its key-encryption key on an external KMS (KMIP)",
		Long: "Every key of a cluster derives from one master secret. With an external KMS, the master secret is\n" +
			"stored only wrapped by a key-encryption key (KEK) that never leaves the KMS.",
	}
	cmd.PersistentFlags().String("workspace", ".", "directory of "+kms.MasterSecretFileName)
	cmd.AddCommand(newKMSCreateKEKCmd(), newKMSInitCmd(), newKMSRotateCmd())
	return cmd
}

func secretPath(cmd *cobra.Command) string {
	dir, _ := cmd.Flags().GetString("workspace")
	return filepath.Join(dir, kms.MasterSecretFileName)
}

// kmipClient loads a KMS configuration file and returns a client for it.
func kmipClient(path string) (*kms.KMIPConfig, *kmip.Client, error) {
	if path == "" {
		return nil, nil, badInput("--kms-config is required")
	}
	conf, err := kms.LoadKMIPConfig(path)
	if err != nil {
		return nil, nil, badInput("%w", err)
	}
	cc, err := conf.ClientConfig()
	if err != nil {
		return nil, nil, badInput("%s: %w", path, err)
	}
	c, err := kmip.New(cc)
	if err != nil {
		return nil, nil, badInput("%s: %w", path, err)
	}
	return conf, c, nil
}

func newKMSCreateKEKCmd() *cobra.Command {
	var configPath, name string
	cmd := &cobra.Command{
		Use:   "create-kek --kms-config FILE [--name NAME]",
		Short: "Create an AES-256 key-encryption key on the KMS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf, c, err := kmipClient(configPath)
			if err != nil {
				return err
			}
			defer c.Close()
			id, err := c.CreateKEK(cmd.Context(), name)
			if err != nil {
				return failed(fmt.Errorf("creating key-encryption key on %s: %w", conf.Endpoint, err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created key-encryption key %s on %s.\nSet kmip.keyID: %q in %s.\n", id, conf.Endpoint, id, configPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "kms-config", "", "KMS configuration file (required)")
	cmd.Flags().StringVar(&name, "name", "constellation-master-secret-kek", "name of the key on the KMS")
	return cmd
}

func newKMSInitCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "init [--kms-config FILE]",
		Short: "Generate the master secret; with a KMS, store it only wrapped by the KEK",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := secretPath(cmd)
			if _, err := os.Lstat(path); err == nil {
				return badInput("%s already exists; refusing to overwrite a master secret (it protects the cluster's data)", path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return badInput("%w", err)
			}
			ms, err := kms.GenerateMasterSecret()
			if err != nil {
				return failed(err)
			}
			file := &kms.SecretFile{Plain: ms}
			where := "in plain form, readable by you only"
			if cmd.Flags().Changed("kms-config") {
				conf, c, err := kmipClient(configPath)
				if err != nil {
					return err
				}
				defer c.Close()
				if conf.KeyID == "" {
					return badInput("%s has no kmip.keyID; create a KEK with 'constellation kms create-kek' first", configPath)
				}
				if file, err = kms.WrapMasterSecret(cmd.Context(), c, conf.KeyID, ms); err != nil {
					return failed(fmt.Errorf("%w (nothing was written)", err))
				}
				where = fmt.Sprintf("wrapped by key-encryption key %s on %s", conf.KeyID, conf.Endpoint)
			}
			if err := kms.WriteSecretFile(path, file, false); err != nil {
				return failed(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Master secret written to %s, %s.\n", path, where)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "kms-config", "", "KMS configuration file; without it the secret is stored in plain form")
	return cmd
}

func newKMSRotateCmd() *cobra.Command {
	var configPath, newKeyID string
	var revokeOld bool
	cmd := &cobra.Command{
		Use:   "rotate --kms-config FILE --new-key-id ID [--revoke-old]",
		Short: "Re-wrap the master secret with another KEK; the master secret itself does not change",
		Long: "Re-wrap the master secret with another key-encryption key and replace the file atomically. The old\n" +
			"KEK keeps working for copies of the old file (for example nodes that restart meanwhile) until you\n" +
			"revoke it, here with --revoke-old or later on the KMS.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if newKeyID == "" {
				return badInput("--new-key-id is required; create a KEK with 'constellation kms create-kek'")
			}
			path := secretPath(cmd)
			file, err := kms.ReadSecretFile(path)
			if err != nil {
				return badInput("%w", err)
			}
			conf, c, err := kmipClient(configPath)
			if err != nil {
				return err
			}
			defer c.Close()
			if !file.IsWrapped() {
				return badInput("%s holds the master secret in plain form; nothing to rotate", path)
			}
			oldKeyID := file.Wrapped.KeyID
			rewrapped, err := kms.RewrapMasterSecret(cmd.Context(), c, file, newKeyID)
			if err != nil {
				return failed(fmt.Errorf("%w (the master secret file is unchanged)", err))
			}
			if err := kms.WriteSecretFile(path, rewrapped, true); err != nil {
				return failed(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Master secret re-wrapped with key-encryption key %s on %s.\n", newKeyID, conf.Endpoint)
			if !revokeOld {
				fmt.Fprintf(cmd.OutOrStdout(), "The old key-encryption key %s still unwraps older copies; revoke it once no node needs them.\n", oldKeyID)
				return nil
			}
			if err := c.RevokeKEK(cmd.Context(), oldKeyID); err != nil {
				return failed(fmt.Errorf("the master secret was re-wrapped, but revoking the old key-encryption key %s failed: %w", oldKeyID, err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked the old key-encryption key %s.\n", oldKeyID)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "kms-config", "", "KMS configuration file (required)")
	cmd.Flags().StringVar(&newKeyID, "new-key-id", "", "ID of the new key-encryption key (required)")
	cmd.Flags().BoolVar(&revokeOld, "revoke-old", false, "revoke the old key-encryption key after re-wrapping")
	return cmd
}
