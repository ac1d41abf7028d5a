// Package logging builds the zerolog logger of both daemons (JSON by
// default, console on a terminal) and routes grpc-go's own logs into it.
package logging

import (
	"fmt"
	"io"
	"os"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/grpclog"
)

// New returns a logger writing to w in format "json", "console" or "auto"
// (console when w is a terminal), at level (debug, info, warn or error).
func New(w io.Writer, format, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	switch format {
	case "auto":
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
		}
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	case "json":
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format %q: want auto, json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// RouteGRPC sends grpc-go's logs to log: its info at debug, since grpc-go is
// chatty about every connection.
func RouteGRPC(log zerolog.Logger) {
	grpclog.SetLoggerV2(grpcLogger{log.With().Str("component", "grpc").Logger()})
}

type grpcLogger struct{ l zerolog.Logger }

func (g grpcLogger) Info(args ...any)                    { g.l.Debug().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Infoln(args ...any)                  { g.l.Debug().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Infof(format string, args ...any)    { g.l.Debug().Msgf(format, args...) }
func (g grpcLogger) Warning(args ...any)                 { g.l.Warn().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any)               { g.l.Warn().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Warningf(format string, args ...any) { g.l.Warn().Msgf(format, args...) }
func (g grpcLogger) Error(args ...any)                   { g.l.Error().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any)                 { g.l.Error().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Errorf(format string, args ...any)   { g.l.Error().Msgf(format, args...) }
func (g grpcLogger) Fatal(args ...any)                   { g.l.Fatal().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Fatalln(args ...any)                 { g.l.Fatal().Msg(fmt.Sprint(args...)) }
func (g grpcLogger) Fatalf(format string, args ...any)   { g.l.Fatal().Msgf(format, args...) }

// V reports whether verbosity level l is on: only at debug.
func (g grpcLogger) V(l int) bool { return g.l.GetLevel() <= zerolog.DebugLevel }
