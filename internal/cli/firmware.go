package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/otad/otad/internal/client"
)

var firmwareView = fieldsView("product_id", "version", "size", "md5", "sha256", "description", "created_at")

// isTerminal says whether w is a terminal, for live output.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *app) firmwareCommand() *cobra.Command {
	cmd := group("firmware", "Upload, list and delete firmware images")
	var product string
	productFlag(cmd, &product)
	path := func(segments ...string) (string, error) {
		return a.productPath(product, append([]string{"firmware"}, segments...)...)
	}

	var version, description, md5sum, sha string
	var noProgress bool
	upload := &cobra.Command{
		Use:   "upload FILE --version VERSION",
		Short: "Upload a firmware image, with a progress bar and its throughput",
		Long: `Uploads FILE as firmware VERSION of the product, streaming it to the server,
which computes its size, MD5 and SHA-256. The SHA-256 otactl computed while
sending is compared with the server's. A progress bar is drawn on stderr when
it is a terminal; the throughput is told at the end in any case.`,
		Example: "  otactl firmware upload fw-2.0.0.bin --version 2.0.0 --description 'fixes'",
		Args:    argNames("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version == "" {
				return usagef("give --version")
			}
			p, err := path()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			if !st.Mode().IsRegular() {
				return fmt.Errorf("%s is not a file", args[0])
			}
			q := url.Values{"version": {version}}
			for k, v := range map[string]string{"description": description, "md5": md5sum, "sha256": sha} {
				if v != "" {
					q.Set(k, v)
				}
			}
			hash := sha256.New()
			var body io.Reader = io.TeeReader(f, hash)
			if !noProgress && isTerminal(a.env.Stderr) {
				bar := progressbar.NewOptions64(st.Size(),
					progressbar.OptionSetWriter(a.env.Stderr),
					progressbar.OptionSetDescription("uploading "+version),
					progressbar.OptionShowBytes(true),
					progressbar.OptionShowCount(),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionClearOnFinish(),
				)
				defer bar.Close()
				body = io.TeeReader(body, bar)
			}
			start := time.Now()
			var raw json.RawMessage
			err = c.Do(cmd.Context(), client.Request{Method: "POST", Path: p, Query: q, Body: body,
				ContentType: "application/octet-stream", ContentLength: st.Size()}, &raw)
			if err != nil {
				return err
			}
			took := time.Since(start)
			var fw struct {
				Size   int64  `json:"size"`
				SHA256 string `json:"sha256"`
			}
			if err := json.Unmarshal(raw, &fw); err != nil {
				return err
			}
			if got := hex.EncodeToString(hash.Sum(nil)); fw.SHA256 != got || fw.Size != st.Size() {
				return fmt.Errorf("the server stored %d bytes of SHA-256 %s, but %s has %d bytes of SHA-256 %s: delete version %s and upload it again",
					fw.Size, fw.SHA256, args[0], st.Size(), got, version)
			}
			a.note(fmt.Sprintf("uploaded %s: %s in %s (%s/s)", version, humanBytes(st.Size()), took.Round(time.Millisecond),
				humanBytes(int64(float64(st.Size())/max(took.Seconds(), 1e-3)))))
			return a.printObject(raw, firmwareView)
		},
	}
	upload.Flags().StringVar(&version, "version", "", "the firmware version (required)")
	upload.Flags().StringVar(&description, "description", "", "free text")
	upload.Flags().StringVar(&md5sum, "md5", "", "the MD5 the image must hash to (the server checks it)")
	upload.Flags().StringVar(&sha, "sha256", "", "the SHA-256 the image must hash to (the server checks it)")
	upload.Flags().BoolVar(&noProgress, "no-progress", false, "draw no progress bar")

	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List firmware, by version",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			return a.list(cmd, p, nil, limit, []column{
				col("VERSION", "version"),
				{"SIZE", func(o obj) string { return humanBytes(o.int("size")) }},
				col("MD5", "md5"), timeCol("CREATED", "created_at"), col("DESCRIPTION", "description"),
			})
		},
	}
	limitFlag(list, &limit, 0)

	show := &cobra.Command{
		Use:   "show VERSION",
		Short: "Show a firmware version",
		Args:  argNames("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			return a.get(cmd, p, firmwareView)
		},
	}
	del := &cobra.Command{
		Use:     "delete VERSION",
		Aliases: []string{"rm"},
		Short:   "Delete a firmware version and its image (refused while a job uses it)",
		Args:    argNames("VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, client.Request{Method: "DELETE", Path: p}, nil, "deleted firmware "+args[0])
		},
	}
	cmd.AddCommand(upload, list, show, del)
	return cmd
}
