// Package config resolves where agentplanectl connects and as whom, like
// kubectl: command-line flags, then environment variables, then the
// selected context of a config file. Secrets (a password, an access key's
// secret) never come from a flag.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// Environment variables.
const (
	EnvConfig    = "AGENTPLANE_CONFIG"
	EnvContext   = "AGENTPLANE_CONTEXT"
	EnvServer    = "AGENTPLANE_SERVER"
	EnvCAFile    = "AGENTPLANE_CA_FILE"
	EnvUser      = "AGENTPLANE_USER"
	EnvPassword  = "AGENTPLANE_PASSWORD"
	EnvAccessKey = "AGENTPLANE_ACCESS_KEY"
	EnvSecretKey = "AGENTPLANE_SECRET_KEY"
)

// DefaultPort is the port of a --server given without one (the server's
// default --grpc-addr).
const DefaultPort = "7070"

// File is the config file: named contexts and the one used by default.
type File struct {
	CurrentContext string    `json:"current-context,omitempty"`
	Contexts       []Context `json:"contexts,omitempty"`
}

// Context is a server and the credentials to use with it: user and
// password, or access key and secret.
type Context struct {
	Name      string `json:"name"`
	Server    string `json:"server,omitempty"`
	CAFile    string `json:"ca-file,omitempty"`
	User      string `json:"user,omitempty"`
	Password  string `json:"password,omitempty"`
	AccessKey string `json:"access-key,omitempty"`
	SecretKey string `json:"secret-key,omitempty"`
}

// Error is a configuration error: the command cannot run as configured.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

// Errorf returns an Error.
func Errorf(format string, a ...any) error { return &Error{fmt.Sprintf(format, a...)} }

// DefaultPath is the config file used when neither --config nor
// AGENTPLANE_CONFIG names one: $XDG_CONFIG_HOME/agentplane/config.yaml, else
// ~/.config/agentplane/config.yaml; "" when neither can be found.
func DefaultPath(getenv func(string) string) string {
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "agentplane", "config.yaml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "agentplane", "config.yaml")
	}
	return ""
}

// Load reads a config file. A file readable or writable by its group or
// others is refused: it holds secrets. explicit says the user named the
// file (a missing one is then an error; a missing default file is an
// empty config).
func Load(path string, explicit bool) (*File, error) {
	if path == "" {
		return &File{}, nil
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return &File{}, nil
	}
	if err != nil {
		return nil, Errorf("config file: %v", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, Errorf("config file %s is open to group or others (mode %04o) and may hold secrets: run chmod 600 %s", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, Errorf("config file: %v", err)
	}
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, Errorf("config file %s: %v", path, err)
	}
	dir := filepath.Dir(path)
	seen := map[string]bool{}
	for i, c := range f.Contexts {
		if c.Name == "" {
			return nil, Errorf("config file %s: context %d has no name", path, i+1)
		}
		if seen[c.Name] {
			return nil, Errorf("config file %s: context %q is defined twice", path, c.Name)
		}
		seen[c.Name] = true
		// A relative CA file is relative to the config file.
		if c.CAFile != "" && !filepath.IsAbs(c.CAFile) {
			f.Contexts[i].CAFile = filepath.Join(dir, c.CAFile)
		}
	}
	return &f, nil
}

// Context returns the named context, or the current one for name "";
// a zero Context when none is named and there is no current one.
func (f *File) Context(name string) (Context, error) {
	explicit := name != ""
	if name == "" {
		name = f.CurrentContext
	}
	if name == "" {
		return Context{}, nil
	}
	for _, c := range f.Contexts {
		if c.Name == name {
			return c, nil
		}
	}
	if explicit {
		return Context{}, Errorf("no context named %q in the config file", name)
	}
	return Context{}, Errorf("the config file's current-context %q is not among its contexts", name)
}

// Flags are the connection flags given on the command line.
type Flags struct {
	Config  string
	Context string
	Server  string
	CAFile  string
	User    string
}

// Method is how calls are authenticated.
type Method int

// Methods.
const (
	Basic     Method = iota + 1 // user and password
	Signature                   // access key and secret
)

// Resolved is where to connect and as whom.
type Resolved struct {
	Server string // host:port
	CAFile string // "" for the system's roots
	Method Method
	// User and Password for Basic (Password "" when it must be prompted
	// for); AccessKey and SecretKey for Signature.
	User, Password       string
	AccessKey, SecretKey string
	// Source says where the credentials came from, for messages.
	Source string
}

// Resolve applies the precedence flags > environment > context.
//
// Server and CA file: each from the first layer that sets it.
// Credentials come from the first layer that names an identity (--user;
// AGENTPLANE_ACCESS_KEY or AGENTPLANE_USER; the context's access-key or
// user), an access key winning over a user within a layer. The secret then
// comes from AGENTPLANE_PASSWORD or AGENTPLANE_SECRET_KEY, else from the
// context when it names the same user or key; a password still missing is
// prompted for (Password ""), a missing secret key is an error.
func Resolve(fl Flags, getenv func(string) string) (Resolved, error) {
	path, explicit := fl.Config, fl.Config != ""
	if path == "" {
		path = getenv(EnvConfig)
		explicit = path != ""
	}
	if path == "" {
		path = DefaultPath(getenv)
	}
	f, err := Load(path, explicit)
	if err != nil {
		return Resolved{}, err
	}
	name := fl.Context
	if name == "" {
		name = getenv(EnvContext)
	}
	ctx, err := f.Context(name)
	if err != nil {
		return Resolved{}, err
	}
	r := Resolved{
		Server: first(fl.Server, getenv(EnvServer), ctx.Server),
		CAFile: first(fl.CAFile, getenv(EnvCAFile), ctx.CAFile),
	}
	if r.Server == "" {
		return Resolved{}, Errorf("no server: give --server, set %s, or use a context with a server", EnvServer)
	}
	if r.Server, err = withPort(r.Server); err != nil {
		return Resolved{}, err
	}
	envAK, envSK := getenv(EnvAccessKey), getenv(EnvSecretKey)
	switch {
	case fl.User != "":
		r.Method, r.User, r.Source = Basic, fl.User, "--user"
	case envAK != "":
		r.Method, r.AccessKey, r.Source = Signature, envAK, EnvAccessKey
	case getenv(EnvUser) != "":
		r.Method, r.User, r.Source = Basic, getenv(EnvUser), EnvUser
	case ctx.AccessKey != "":
		r.Method, r.AccessKey, r.Source = Signature, ctx.AccessKey, "context "+ctx.Name
	case ctx.User != "":
		r.Method, r.User, r.Source = Basic, ctx.User, "context "+ctx.Name
	default:
		return Resolved{}, Errorf("no credentials: set %s (and %s) or %s and %s, give --user, or use a context with credentials",
			EnvUser, EnvPassword, EnvAccessKey, EnvSecretKey)
	}
	switch r.Method {
	case Basic:
		r.Password = getenv(EnvPassword)
		if r.Password == "" && ctx.User == r.User {
			r.Password = ctx.Password
		}
	case Signature:
		r.SecretKey = envSK
		if r.SecretKey == "" && ctx.AccessKey == r.AccessKey {
			r.SecretKey = ctx.SecretKey
		}
		if r.SecretKey == "" {
			return Resolved{}, Errorf("no secret key for access key %s (from %s): set %s or put secret-key in the context", r.AccessKey, r.Source, EnvSecretKey)
		}
	}
	return r, nil
}

func first(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// withPort adds DefaultPort to an address without a port.
func withPort(addr string) (string, error) {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr, nil
	}
	h := addr
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	if h == "" {
		return "", Errorf("server address %q has no host", addr)
	}
	return net.JoinHostPort(h, DefaultPort), nil
}
