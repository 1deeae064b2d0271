package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// config is the config file: JSON, written 0600 since it holds the token.
type config struct {
	Server  string `json:"server,omitempty"`
	Token   string `json:"token,omitempty"`
	Product string `json:"product,omitempty"`
}

var configKeys = []string{"server", "token", "product"}

// configPath is --config, else $XDG_CONFIG_HOME/otactl/config.json, else
// ~/.config/otactl/config.json.
func (a *app) configPath() (string, error) {
	if a.configFile != "" {
		return a.configFile, nil
	}
	if dir := a.env.Getenv("XDG_CONFIG_HOME"); dir != "" {
		return filepath.Join(dir, "otactl", "config.json"), nil
	}
	home := a.env.Getenv("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return "", fmt.Errorf("finding the config file: %w", err)
		}
	}
	return filepath.Join(home, ".config", "otactl", "config.json"), nil
}

// loadConfig reads the config file; a missing one is empty.
func (a *app) loadConfig() (config, error) {
	var cfg config
	path, err := a.configPath()
	if err != nil {
		return cfg, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("reading the config file: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

func (a *app) saveConfig(cfg config) (string, error) {
	path, err := a.configPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("writing the config file: %w", err)
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("writing the config file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("writing the config file: %w", err)
	}
	return path, nil
}

func (c *config) field(key string) *string {
	switch key {
	case "server":
		return &c.Server
	case "token":
		return &c.Token
	case "product":
		return &c.Product
	}
	return nil
}

func (a *app) configCommand() *cobra.Command {
	cmd := group("config", "Show or change the config file (server, token, product)")
	keyArg := func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 && !slices.Contains(configKeys, args[0]) {
			return usagef("unknown key %q: one of %s", args[0], strings.Join(configKeys, ", "))
		}
		return nil
	}
	set := &cobra.Command{
		Use:       "set KEY VALUE",
		Short:     "Set server, token or product in the config file",
		Example:   "  otactl config set server http://127.0.0.1:8080\n  otactl config set token otad_...\n  otactl config set product THERMO0001",
		ValidArgs: configKeys,
		Args:      cobra.MatchAll(argNames("KEY", "VALUE"), keyArg),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			*cfg.field(args[0]) = args[1]
			path, err := a.saveConfig(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.env.Stderr, "%s set in %s\n", args[0], path)
			return nil
		},
	}
	unset := &cobra.Command{
		Use:       "unset KEY",
		Short:     "Remove server, token or product from the config file",
		ValidArgs: configKeys,
		Args:      cobra.MatchAll(argNames("KEY"), keyArg),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			*cfg.field(args[0]) = ""
			_, err = a.saveConfig(cfg)
			return err
		},
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the config file (the token masked) and where it is",
		Args:  argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			path, _ := a.configPath()
			if cfg.Token != "" {
				cfg.Token = maskToken(cfg.Token)
			}
			if a.output == "json" {
				return writeJSONValue(a.env.Stdout, map[string]string{"path": path, "server": cfg.Server, "token": cfg.Token, "product": cfg.Product})
			}
			return writeFields(a.env.Stdout, [][2]string{{"path", path}, {"server", cfg.Server}, {"token", cfg.Token}, {"product", cfg.Product}})
		},
	}
	cmd.AddCommand(set, unset, show)
	return cmd
}

// maskToken keeps a token's first characters, enough to tell tokens apart.
func maskToken(t string) string {
	if len(t) <= 9 {
		return "…"
	}
	return t[:9] + "…"
}
