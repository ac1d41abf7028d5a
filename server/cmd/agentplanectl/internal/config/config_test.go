package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const twoContexts = `current-context: prod
contexts:
- name: prod
  server: prod.example:7070
  ca-file: prod-ca.crt
  user: alice
  password: alice-pw
- name: ci
  server: ci.example
  access-key: AKCI
  secret-key: ci-secret
`

func writeConfig(t *testing.T, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestResolvePrecedence(t *testing.T) {
	cfg := writeConfig(t, twoContexts, 0o600)
	dir := filepath.Dir(cfg)
	for _, tc := range []struct {
		name  string
		flags Flags
		env   map[string]string
		want  Resolved
	}{
		{"the current context", Flags{Config: cfg}, nil,
			Resolved{Server: "prod.example:7070", CAFile: filepath.Join(dir, "prod-ca.crt"), Method: Basic, User: "alice", Password: "alice-pw", Source: "context prod"}},
		{"--context, default port, access key", Flags{Config: cfg, Context: "ci"}, nil,
			Resolved{Server: "ci.example:7070", Method: Signature, AccessKey: "AKCI", SecretKey: "ci-secret", Source: "context ci"}},
		{"AGENTPLANE_CONTEXT and AGENTPLANE_CONFIG", Flags{}, map[string]string{EnvConfig: cfg, EnvContext: "ci"},
			Resolved{Server: "ci.example:7070", Method: Signature, AccessKey: "AKCI", SecretKey: "ci-secret", Source: "context ci"}},
		{"env over context", Flags{Config: cfg}, map[string]string{EnvServer: "env:1", EnvCAFile: "/env/ca", EnvUser: "bob", EnvPassword: "bob-pw"},
			Resolved{Server: "env:1", CAFile: "/env/ca", Method: Basic, User: "bob", Password: "bob-pw", Source: EnvUser}},
		{"flags over env", Flags{Config: cfg, Server: "flag:2", CAFile: "/flag/ca", User: "carol"}, map[string]string{EnvServer: "env:1", EnvCAFile: "/env/ca", EnvUser: "bob", EnvPassword: "carol-pw"},
			Resolved{Server: "flag:2", CAFile: "/flag/ca", Method: Basic, User: "carol", Password: "carol-pw", Source: "--user"}},
		{"another user gets no context password (prompt)", Flags{Config: cfg, User: "dave"}, nil,
			Resolved{Server: "prod.example:7070", CAFile: filepath.Join(dir, "prod-ca.crt"), Method: Basic, User: "dave", Source: "--user"}},
		{"env access key over context user", Flags{Config: cfg}, map[string]string{EnvAccessKey: "AKENV", EnvSecretKey: "env-secret"},
			Resolved{Server: "prod.example:7070", CAFile: filepath.Join(dir, "prod-ca.crt"), Method: Signature, AccessKey: "AKENV", SecretKey: "env-secret", Source: EnvAccessKey}},
		{"env secret for the context's key", Flags{Config: cfg, Context: "ci"}, map[string]string{EnvSecretKey: "rotated"},
			Resolved{Server: "ci.example:7070", Method: Signature, AccessKey: "AKCI", SecretKey: "rotated", Source: "context ci"}},
		{"no config file at the default path", Flags{}, map[string]string{"HOME": t.TempDir(), EnvServer: "[::1]", EnvUser: "u", EnvPassword: "p"},
			Resolved{Server: "[::1]:7070", Method: Basic, User: "u", Password: "p", Source: EnvUser}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(tc.flags, env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	cfg := writeConfig(t, twoContexts, 0o600)
	for _, tc := range []struct {
		name  string
		flags Flags
		env   map[string]string
		want  string
	}{
		{"no server", Flags{}, map[string]string{"HOME": t.TempDir(), EnvUser: "u"}, "no server"},
		{"no credentials", Flags{Server: "s:1"}, map[string]string{"HOME": t.TempDir()}, "no credentials"},
		{"unknown context", Flags{Config: cfg, Context: "nope"}, nil, `no context named "nope"`},
		{"missing explicit file", Flags{Config: filepath.Join(t.TempDir(), "none.yaml")}, nil, "no such file"},
		{"access key without secret", Flags{Server: "s:1"}, map[string]string{"HOME": t.TempDir(), EnvAccessKey: "AK"}, "no secret key for access key AK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Resolve(tc.flags, env(tc.env))
			var ce *Error
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want a config error containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadRefusesOpenFile(t *testing.T) {
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		p := writeConfig(t, twoContexts, mode)
		_, err := Load(p, true)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
			t.Errorf("mode %04o: error %v, want a refusal saying chmod 600", mode, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") && strings.Contains(err.Error(), "ci-secret") {
			t.Errorf("the refusal shows a secret: %v", err)
		}
	}
	if _, err := Load(writeConfig(t, twoContexts, 0o400), true); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestLoadRejectsBadFiles(t *testing.T) {
	for body, want := range map[string]string{
		"contexts:\n- name: a\n  sever: typo\n":            "sever",
		"contexts:\n- server: s\n":                         "has no name",
		"contexts:\n- name: a\n- name: a\n":                "defined twice",
		"current-context: b\ncontexts:\n- name: a\n":       `current-context "b"`,
		"contexts: [\n":                                    "config file",
		"current-context: a\ncontexts:\n- name: a\n  x: 1": "x",
	} {
		p := writeConfig(t, body, 0o600)
		f, err := Load(p, true)
		if err == nil {
			_, err = f.Context("")
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", body, err, want)
		}
	}
}
