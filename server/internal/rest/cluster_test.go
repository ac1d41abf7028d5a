package rest

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"agentplane/server/internal/replica"
	"agentplane/server/internal/store"
)

func TestListReplicas(t *testing.T) {
	st, err := store.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	self, err := replica.Start(context.Background(), replica.Config{Store: st, ID: "a:7070", Addr: "10.0.0.1:7070", Version: "v9", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(self.Close)
	env := &testEnv{hosts: &fakeHosts{}, tasks: &fakeTasks{}, logs: &syncBuffer{}}
	env.srv = httptest.NewServer(NewHandler(Config{Hosts: env.hosts, Tasks: env.tasks, Users: fakeUsers{}, Replicas: self,
		Log: zerolog.New(env.logs)}))
	t.Cleanup(env.srv.Close)

	checkErrorEnvelope(t, env.do(t, req{method: "GET", path: "/api/v2/replicas"}), 401)
	for _, user := range []string{"viewer", "tasker", "operator", "admin"} {
		r := env.do(t, req{method: "GET", path: "/api/v2/replicas", user: user})
		if r.status != 200 {
			t.Fatalf("%s: %d %s", user, r.status, r.raw)
		}
		data, _ := r.body["data"].(map[string]any)
		contents, _ := data["contents"].([]any)
		if len(contents) != 1 {
			t.Fatalf("%s: %s", user, r.raw)
		}
		got := contents[0].(map[string]any)
		if got["id"] != "a:7070" || got["address"] != "10.0.0.1:7070" || got["version"] != "v9" || got["live"] != true ||
			!timeRE.MatchString(got["startTime"].(string)) || !timeRE.MatchString(got["heartbeatTime"].(string)) {
			t.Errorf("%s: %s", user, r.raw)
		}
		if age, _ := got["heartbeatAgeMillis"].(float64); age < 0 || age > float64(time.Minute.Milliseconds()) {
			t.Errorf("%s: heartbeat age %v", user, got["heartbeatAgeMillis"])
		}
	}
}
