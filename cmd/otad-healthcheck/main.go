// Command otad-healthcheck is the container image's HEALTHCHECK: the final
// image has no shell, curl or wget, so this asks otad's /readyz itself. It
// exits 0 when otad answers 200 and 1 otherwise.
//
//	otad-healthcheck [URL]
//
// Without a URL it derives one from OTAD_HTTP_ADDR (default :8080), the
// same variable otad listens by, so both agree inside the container.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	url := readyURL(os.Getenv("OTAD_HTTP_ADDR"))
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	if err := check(url, 5*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "otad-healthcheck:", err)
		os.Exit(1)
	}
}

// readyURL turns otad's HTTP listen address into the /readyz URL on this
// host: an empty or wildcard host becomes 127.0.0.1.
func readyURL(addr string) string {
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr + "/readyz"
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz"
}

// check fails unless url answers 200 within timeout.
func check(url string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return nil
}
