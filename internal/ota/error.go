// Package ota is the domain of otad: identities, products, devices, firmware,
// upgrade jobs and their state machine, the errors every layer speaks, and the
// interfaces (Store, Blobs, Notifier, Bus) the rest of the program implements.
// It imports only the standard library.
package ota

import (
	"errors"
	"fmt"
)

// Error codes. They are stable: API clients and MQTT reason codes are derived
// from them, so add new ones sparingly and never rename one.
const (
	EINVALID      = "invalid"
	ENOTFOUND     = "not_found"
	ECONFLICT     = "conflict"
	ETOOLARGE     = "too_large"
	EUNAUTHORIZED = "unauthorized"
	EFORBIDDEN    = "forbidden"
	EUNAVAILABLE  = "unavailable"
	ETOOMANY      = "too_many_requests" // a limit on concurrent or repeated requests; retry later
	EINTERNAL     = "internal"
)

// Error is an error whose message is safe to show to the caller.
type Error struct {
	Code    string
	Message string
	// Detail carries structured data for the caller, such as the devices in
	// conflict with a new job. It is optional.
	Detail any
}

func (e *Error) Error() string {
	return fmt.Sprintf("otad error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the safe message of the first *Error in err's chain,
// or a generic text for any other error, so internals never leak.
func ErrorMessage(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// IsCode reports whether err carries the given code.
func IsCode(err error, code string) bool { return ErrorCode(err) == code }
