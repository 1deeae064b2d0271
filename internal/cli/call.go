package cli

import (
	"encoding/json"
	"io"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

// call sends r and prints the object answered with view, or, with a nil
// view (an answer without body), says done on stderr.
func (a *app) call(cmd *cobra.Command, r client.Request, view func(io.Writer, obj) error, done string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	if view == nil {
		if err := c.Do(cmd.Context(), r, nil); err != nil {
			return err
		}
		a.note(done)
		return nil
	}
	var raw json.RawMessage
	if err := c.Do(cmd.Context(), r, &raw); err != nil {
		return err
	}
	if err := a.printObject(raw, view); err != nil {
		return err
	}
	a.note(done)
	return nil
}

// get prints the object at path with view.
func (a *app) get(cmd *cobra.Command, path string, view func(io.Writer, obj) error) error {
	return a.call(cmd, client.Request{Method: "GET", Path: path}, view, "")
}

// list prints up to max items (0: all) of the list at path as a table of
// cols.
func (a *app) list(cmd *cobra.Command, path string, q url.Values, max int, cols []column) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	items, err := c.ListAll(cmd.Context(), path, q, max)
	if err != nil {
		return err
	}
	return a.printList(items, cols)
}

// note tells the user what was done, on stderr so that stdout stays the
// command's output.
func (a *app) note(msg string) {
	if msg != "" {
		io.WriteString(a.env.Stderr, msg+"\n")
	}
}

// limitFlag adds --limit to a list command.
func limitFlag(cmd *cobra.Command, p *int, def int) {
	cmd.Flags().IntVar(p, "limit", def, "show at most this many (0: all)")
}

// openInput opens file, or stdin for "-".
func openInput(stdin io.Reader, file string) (io.Reader, func(), error) {
	if file == "-" {
		return stdin, func() {}, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}
