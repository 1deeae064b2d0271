package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/otad/otad/internal/ota"
)

// sealSecrets brings every stored device secret to box's key at start:
// plaintext ones (from before a key was set) and ones sealed with
// OTAD_SECRET_KEY_OLD are encrypted with OTAD_SECRET_KEY. A secret that
// does not open (another key, or encrypted while no key is set) stops
// otad with an error, before anything is changed by it: a device whose
// secret cannot be read could never sign in again. Without a key it warns
// that secrets are stored unencrypted.
func sealSecrets(ctx context.Context, store ota.Store, box *ota.SecretBox, log *slog.Logger) error {
	log = log.With("component", "store")
	params := ota.DeviceSecretListParams{Limit: ota.MaxPageLimit}
	resealed := 0
	for {
		page, err := store.DeviceSecretList(ctx, params)
		if err != nil {
			return fmt.Errorf("read device secrets: %w", err)
		}
		for _, d := range page {
			next, changed, err := box.Reseal(d.ProductID, d.Name, d.Stored)
			if err != nil {
				why := "OTAD_SECRET_KEY is not the key they were encrypted with (during a rotation, name the previous key in OTAD_SECRET_KEY_OLD)"
				if !box.Encrypts() {
					why = "they are encrypted, and OTAD_SECRET_KEY is not set"
				}
				return fmt.Errorf("device secrets: the secret of device %s of product %s does not open: %s", d.Name, d.ProductID, why)
			}
			if !changed {
				continue
			}
			err = store.DeviceSecretUpdate(ctx, ota.DeviceSecretUpdateParams{ProductID: d.ProductID, Name: d.Name, Old: d.Stored, New: next})
			if err != nil && !ota.IsCode(err, ota.ECONFLICT) { // a conflict: another replica did it, or the device is gone
				return fmt.Errorf("encrypt device secrets: %w", err)
			}
			resealed++
		}
		if len(page) < params.Limit {
			break
		}
		last := page[len(page)-1]
		params.AfterProduct, params.AfterName = last.ProductID, last.Name
	}
	if !box.Encrypts() {
		log.Warn("device secrets are stored unencrypted: set OTAD_SECRET_KEY (32 random bytes, base64 or hex) to encrypt them at rest")
	} else if resealed > 0 {
		log.Info("encrypted device secrets with OTAD_SECRET_KEY", "devices", resealed)
	}
	return nil
}
