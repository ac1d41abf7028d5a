package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// requireChromiumEnv makes the browser test fail, not skip, when no
// Chromium can run (CI sets it, having installed Debian's chromium).
const requireChromiumEnv = "AGENTPLANE_REQUIRE_CHROMIUM"

// screenshotEnv, when set, is a path the task page's screenshot is also
// written to (how docs/console-task.png is made).
const screenshotEnv = "AGENTPLANE_CONSOLE_SCREENSHOT"

// chromium returns the browser's path, or skips the test (fails it with
// AGENTPLANE_REQUIRE_CHROMIUM=1).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(requireChromiumEnv) == "1" {
		t.Fatalf("no Chromium on PATH (chromium, chromium-browser, google-chrome) and %s=1: install Debian's chromium", requireChromiumEnv)
	}
	t.Skipf("no Chromium on PATH; apt-get install chromium (or set %s=1 to fail instead)", requireChromiumEnv)
	return ""
}

// browser is a headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
}

func newBrowser(t *testing.T, ctx context.Context) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true),
		// The server's certificate is from its own CA, generated per test.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1180, 720),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first run starts the browser, for as long as bctx lives.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return &browser{t: t, ctx: bctx}
}

// do runs steps, failing the test with what and the page's text on error.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	evalJS[chromedp.Void](b, what, chromedp.Steps(steps...))
}

// evalJS runs a, failing the test with what and the page's text on error.
func evalJS[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		page, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		b.t.Fatalf("%s: %v\npage text:\n%s", what, err, page)
	}
	return v
}

// js evaluates expr in the page.
func js[T any](b *browser, what, expr string) T {
	b.t.Helper()
	return evalJS(b, what, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// waitJS waits until expr is true in the page.
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	evalJS(b, "waiting for "+what, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingTimeout(25*time.Second), chromedp.WithPollingInterval(50*time.Millisecond)))
}

func (b *browser) signIn(s *server, c *creds) {
	b.t.Helper()
	b.do("signing in as "+c.user,
		chromedp.Navigate(s.url("/ui/hosts")),
		chromedp.WaitVisible(chromedp.CSS("#username")),
		chromedp.SendKeys(chromedp.CSS("#username"), c.user),
		chromedp.SendKeys(chromedp.CSS("#password"), c.pass),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#hosts")),
	)
}

func (b *browser) signOut() {
	b.t.Helper()
	b.do("signing out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#username")))
}

// confirm clicks the dialog's Confirm.
func (b *browser) confirm() {
	b.t.Helper()
	b.do("confirming", chromedp.WaitVisible(chromedp.CSS("#confirm[open] #confirm-yes")), chromedp.Click(chromedp.CSS("#confirm-yes")))
}

// stopHost clicks the host's Stop and confirms; it returns the task id the
// page opened.
func (b *browser) stopHost(s *server, hostID int64) int64 {
	b.t.Helper()
	b.do("opening the hosts page", chromedp.Navigate(s.url("/ui/hosts")), chromedp.WaitVisible(chromedp.CSS("#hosts")))
	b.do("clicking Stop", chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-host-id="%d"] button[data-url$="/agent/stop"]`, hostID))))
	b.confirm()
	b.do("opening the task page", chromedp.WaitVisible(chromedp.CSS("#dag g.node")))
	return js[int64](b, "reading the task id", `Number(document.getElementById("task").dataset.taskId)`)
}

// node selects the DAG node of the subtask named name.
func node(name string) chromedp.CSS {
	return chromedp.CSS(fmt.Sprintf(`#dag g.node[data-name=%q]`, name))
}

func nodeStatus(name, status string) string {
	return fmt.Sprintf(`!!document.querySelector('#dag g.node[data-name=%q][data-status=%q]')`, name, status)
}

// TestConsoleBrowser drives the web console in headless Chromium against
// the real server, agentd and fake OCP Agent: sign in, stop a host and see
// its three subtasks turn SUCCESSFUL without a reload (and the Stop
// subtask's log), cancel a slow stop, and, as a viewer, find no action and
// have the server refuse one sent anyway. It keeps a screenshot of the
// task page.
func TestConsoleBrowser(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := newBrowser(t, ctx)
	s := startServer(t)
	// Its ocp_agentd takes a second to exit, so that the page sees the
	// stop RUNNING before it sees it SUCCESSFUL.
	home := newHome(t)
	startFake(t, home, "FAKE_OCP_MODE_ocp_agentd=slow", "FAKE_OCP_SLOW=1s")
	quick := s.startAgentd(t, home, 30*time.Second)
	slowHome := newHome(t)
	startFake(t, slowHome, "FAKE_OCP_MODE_ocp_agentd=slow", "FAKE_OCP_SLOW=5s")
	slow := s.startAgentd(t, slowHome, 30*time.Second)
	viewer := &creds{"viewer", "viewer-password-1"}
	if r := s.call(t, http.MethodPost, "/api/v2/iam/users", admin,
		map[string]any{"username": viewer.user, "password": viewer.pass, "roles": []string{"HOST_VIEWER", "TASK_VIEWER"}}); r.status != http.StatusOK {
		t.Fatalf("creating the viewer: %d %s", r.status, r.body)
	}

	b.signIn(s, admin)
	var stopID int64
	t.Run("stop a host and watch it", func(t *testing.T) {
		stopID = b.stopHost(s, quick.hostID)
		b.waitJS("the Stop subtask RUNNING", nodeStatus(stopAllName, "RUNNING"))
		// A mark that a reload would lose.
		js[bool](b, "marking the page", `window.notReloaded = true`)
		b.waitJS("the three subtasks SUCCESSFUL", `document.querySelectorAll('#dag g.node[data-status="SUCCESSFUL"]').length === 3`)
		b.waitJS("the task SUCCESSFUL", `document.getElementById("task").dataset.status === "SUCCESSFUL"`)
		if !js[bool](b, "checking for a reload", `window.notReloaded === true`) {
			t.Error("the page was reloaded")
		}
		b.do("selecting the Stop subtask", chromedp.Click(node(stopAllName)))
		b.waitJS("the Stop subtask's log", `document.getElementById("log").textContent.includes("SIGTERM")`)
		if tk := s.getTask(t, stopID); tk.Status != "SUCCESSFUL" {
			t.Errorf("task %d is %s on the server", stopID, tk.Status)
		}
		png := evalJS(b, "taking a screenshot", chromedp.Screenshot(chromedp.CSS("body")))
		saveScreenshot(t, png)
	})

	t.Run("cancel a slow stop", func(t *testing.T) {
		id := b.stopHost(s, slow.hostID)
		b.waitJS("the Stop subtask RUNNING", nodeStatus(stopAllName, "RUNNING"))
		b.do("canceling it", chromedp.Click(node(stopAllName)),
			chromedp.WaitVisible(chromedp.CSS("#subtask-cancel")), chromedp.Click(chromedp.CSS("#subtask-cancel")))
		b.confirm()
		b.waitJS("the Stop subtask FAILED", nodeStatus(stopAllName, "FAILED"))
		b.waitJS("the task FAILED", `document.getElementById("task").dataset.status === "FAILED"`)
		b.waitJS("Retry and Roll back offered", `!document.getElementById("task-retry").hidden && !document.getElementById("task-rollback").hidden`)
		tk := s.opGet(t, id)
		if st := tk.sub(t, stopAllName); tk.Status != "FAILED" || st.Status != "FAILED" || st.Operation != "CANCEL" {
			t.Errorf("task %d %s, its stop subtask %s %s; want FAILED, FAILED CANCEL", id, tk.Status, st.Status, st.Operation)
		}
	})

	t.Run("a viewer sees no action", func(t *testing.T) {
		b.signOut()
		b.signIn(s, viewer)
		if n := js[int](b, "counting the hosts page's actions", `document.querySelectorAll("#hosts button").length`); n != 0 {
			t.Errorf("the viewer's hosts page has %d buttons", n)
		}
		b.do("opening the stop task", chromedp.Navigate(s.url(fmt.Sprintf("/ui/tasks/%d", stopID))), chromedp.WaitVisible(chromedp.CSS("#dag g.node")))
		if n := js[int](b, "counting the task page's actions", `document.querySelectorAll("#task button").length`); n != 0 {
			t.Errorf("the viewer's task page has %d buttons", n)
		}
		// A batch's branches are boxed, one per host.
		r := s.call(t, http.MethodPost, "/api/v2/compute/hosts/batchStopAgents", admin, map[string]any{"hostIds": []int64{quick.hostID}})
		var batch taskJSON
		r.decode(t, &batch)
		b.do("opening a batch task", chromedp.Navigate(s.url(fmt.Sprintf("/ui/tasks/%d", batch.ID))), chromedp.WaitVisible(chromedp.CSS("#dag rect.branch")))
		if n := js[int](b, "counting the branches", `document.querySelectorAll("#dag rect.branch").length`); n != 1 {
			t.Errorf("the batch task's DAG has %d branch boxes, want 1", n)
		}
		s.waitFinal(t, batch.ID)
		// Sent anyway, with the page's valid token: the server refuses.
		answer := js[string](b, "posting a stop anyway", fmt.Sprintf(`fetch("/ui/api/hosts/%d/agent/stop", {method: "POST",
			headers: {"X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content}}).then(r => r.status + " " + r.statusText)`, quick.hostID))
		if !strings.HasPrefix(answer, "403") {
			t.Errorf("the viewer's stop was answered %q, want 403", answer)
		}
		if h := s.getHost(t, quick.hostID); h.OperationTaskID != 0 {
			t.Errorf("a refused stop left operationTaskId %d", h.OperationTaskID)
		}
	})
}

// saveScreenshot keeps png in a directory that outlives the test (its path
// is logged), and at $AGENTPLANE_CONSOLE_SCREENSHOT when set.
func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("the screenshot is not a PNG (%d bytes)", len(png))
	}
	dir, err := os.MkdirTemp("", "agentplane-console-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "console-task.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the task page: %s (%d bytes)", path, len(png))
	if extra := os.Getenv(screenshotEnv); extra != "" {
		if err := os.WriteFile(extra, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
