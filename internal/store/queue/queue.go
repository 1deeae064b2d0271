// Package queue migrates the schema of River, the job queue that webhook
// delivery keeps in the store's own database, for both drivers.
package queue

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivermigrate"
)

// Migrate applies River's migrations not yet applied and names them as
// "river NNN_name". It takes no lock: the caller holds the store's.
func Migrate[TTx any](ctx context.Context, driver riverdriver.Driver[TTx]) ([]string, error) {
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("migrate river: %w", err)
	}
	res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return nil, fmt.Errorf("migrate river: %w", err)
	}
	var applied []string
	for _, v := range res.Versions {
		applied = append(applied, fmt.Sprintf("river %03d_%s", v.Version, v.Name))
	}
	return applied, nil
}
