package cluster

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// slogWriter routes lines written by raft's hclog and memberlist's log.Logger
// into the node's slog logger, keeping their level ("[WARN]" and the like).
type slogWriter struct {
	log       *slog.Logger
	component string
}

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		w.writeLine(string(line))
	}
	return len(p), nil
}

func (w slogWriter) writeLine(line string) {
	level := slog.LevelInfo
	if i := strings.Index(line, "["); i >= 0 {
		if j := strings.Index(line[i:], "]"); j > 0 {
			switch strings.TrimSpace(line[i+1 : i+j]) {
			case "TRACE", "DEBUG":
				level = slog.LevelDebug
			case "WARN":
				level = slog.LevelWarn
			case "ERROR", "ERR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(line[i+j+1:])
		}
	}
	if !w.log.Enabled(context.Background(), level) {
		return
	}
	w.log.Log(context.Background(), level, line, "component", w.component)
}

func hclogLevel(l *slog.Logger) hclog.Level {
	ctx := context.Background()
	switch {
	case l.Enabled(ctx, slog.LevelDebug):
		return hclog.Debug
	case l.Enabled(ctx, slog.LevelInfo):
		return hclog.Info
	case l.Enabled(ctx, slog.LevelWarn):
		return hclog.Warn
	default:
		return hclog.Error
	}
}

func newHCLogger(l *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:            name,
		Level:           hclogLevel(l),
		Output:          slogWriter{log: l, component: name},
		DisableTime:     true,
		IncludeLocation: false,
	})
}

func newStdLogger(l *slog.Logger, name string) *log.Logger {
	return log.New(io.Writer(slogWriter{log: l, component: name}), "", 0)
}
