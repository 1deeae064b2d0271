//go:build race

package main

// raceEnabled builds the helper binaries the tests run (otasim) with the
// race detector too when the tests run with it.
const raceEnabled = true
