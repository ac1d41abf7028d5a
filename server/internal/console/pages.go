package console

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"agentplane/server/internal/auth"
	"agentplane/server/internal/host"
	"agentplane/server/internal/paging"
	"agentplane/server/internal/task"
)

// pageNames are the pages, each assets/templates/<name>.html inside
// layout.html.
var pageNames = []string{"signin", "hosts", "tasks", "task", "error"}

func parsePages() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(template.FuncMap{"when": formatTime}).
			ParseFS(assets, "assets/templates/layout.html", "assets/templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: page %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

// pageData is what every page shows: the user (none on the sign-in page),
// their CSRF token (for the script and the sign-out form), which actions
// their roles allow, and an error to show.
type pageData struct {
	Title       string
	User        string
	CSRF        string
	HostManager bool // stop, start, restart
	TaskManager bool // retry, rollback, skip, cancel
	Error       string
}

func (c *Console) data(s *session, title, errMsg string) pageData {
	d := pageData{Title: title, Error: errMsg}
	if s != nil {
		p := s.principal("")
		d.User, d.CSRF = s.User, s.CSRF
		d.HostManager, d.TaskManager = p.Has(auth.RoleHostManager), p.Has(auth.RoleTaskManager)
	}
	return d
}

// render writes page name with data d, or a plain 500 when it fails.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, d any) {
	var b bytes.Buffer
	if err := c.pages[name].Execute(&b, d); err != nil {
		c.log(r).Error().Err(err).Str("page", name).Msg("rendering a console page")
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

// renderError shows err on the error page, with its status.
func (c *Console) renderError(w http.ResponseWriter, r *http.Request, title string, err error) {
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		c.log(r).Error().Err(err).Str("path", r.URL.Path).Msg("console page failed")
	}
	c.render(w, r, status, "error", c.data(sessionOf(r.Context()), title, userMessage(err)))
}

// formatTime shows a time in the server's zone; "never" for the zero time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.In(time.Local).Format("2006-01-02 15:04:05")
}

// pager links the previous and next pages of a list.
type pager struct {
	Page, Pages int
	Total       int64
	Prev, Next  string // "" when none
}

func newPager(r *http.Request, page, size int, total int64) pager {
	p := pager{Page: page, Total: total, Pages: int((total + int64(size) - 1) / int64(size))}
	link := func(n int) string {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(n))
		return r.URL.Path + "?" + q.Encode()
	}
	if page > 1 {
		p.Prev = link(page - 1)
	}
	if page < p.Pages {
		p.Next = link(page + 1)
	}
	return p
}

// hostsData is the hosts page's data.
type hostsData struct {
	pageData
	Hosts []host.Host
	Pager pager
}

// hostsPage: GET /ui/hosts?page= → the hosts, their status, their agent's
// status and when their agentd was last heard from; stop, start and
// restart buttons for a HOST_MANAGER.
func (c *Console) hostsPage(w http.ResponseWriter, r *http.Request) {
	page, err := formInt(r.URL.Query(), "page", 1)
	if err != nil {
		c.renderError(w, r, "Hosts", err)
		return
	}
	const size = 100
	p, err := c.cfg.Hosts.ListHosts(r.Context(), host.ListQuery{Page: page, Size: size})
	if err != nil {
		c.renderError(w, r, "Hosts", err)
		return
	}
	c.render(w, r, http.StatusOK, "hosts", hostsData{
		pageData: c.data(sessionOf(r.Context()), "Hosts", ""), Hosts: p.Hosts, Pager: newPager(r, page, size, p.Total),
	})
}

// tasksData is the tasks page's data: the filters as given, and the page of
// tasks they select.
type tasksData struct {
	pageData
	Filter   url.Values
	Statuses []task.Status
	Types    []task.Type
	Sorts    []string
	Tasks    []task.Task
	Pager    pager
}

// tasksPage: GET /ui/tasks?name=&status=&type=&hostId=&sort=&page=&size= →
// the tasks, filtered as the REST list filters them.
func (c *Console) tasksPage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	d := tasksData{
		pageData: c.data(sessionOf(r.Context()), "Tasks", ""), Filter: v,
		Statuses: []task.Status{task.StatusRunning, task.StatusFailed, task.StatusSuccessful},
		Types:    []task.Type{task.TypeManual, task.TypeScheduled, task.TypeSysScheduled},
		Sorts:    []string{task.SortID, task.SortName, task.SortStatus, task.SortStartTime, task.SortEndTime},
	}
	q, err := taskQuery(v)
	if err == nil {
		var p task.Page
		if p, err = c.cfg.Tasks.ListTasks(r.Context(), q); err == nil {
			d.Tasks, d.Pager = p.Tasks, newPager(r, q.Page, q.Size, p.Total)
		}
	}
	status := http.StatusOK
	if err != nil {
		status, d.Error = statusOf(err), userMessage(err)
	}
	c.render(w, r, status, "tasks", d)
}

// taskQuery reads the tasks page's filters, as the REST list's parameters.
func taskQuery(v url.Values) (task.ListQuery, error) {
	q := task.ListQuery{Name: v.Get("name"), Status: task.Status(v.Get("status")), Type: task.Type(v.Get("type"))}
	var err error
	if q.Page, err = formInt(v, "page", 1); err != nil {
		return q, err
	}
	if q.Size, err = formInt(v, "size", paging.DefaultSize); err != nil {
		return q, err
	}
	hostID, err := formInt(v, "hostId", 0)
	if err != nil {
		return q, err
	}
	q.HostID = int64(hostID)
	switch q.Status {
	case "", task.StatusRunning, task.StatusFailed, task.StatusSuccessful:
	default:
		return q, invalid("status must be RUNNING, FAILED or SUCCESSFUL, got %q", q.Status)
	}
	switch q.Type {
	case "", task.TypeManual, task.TypeScheduled, task.TypeSysScheduled:
	default:
		return q, invalid("type must be MANUAL, SCHEDULED or SYS_SCHEDULED, got %q", q.Type)
	}
	q.Sort, err = task.ParseSort(v.Get("sort"))
	return q, err
}

// taskData is the task page's data; the script draws the DAG from the
// task's event stream.
type taskData struct {
	pageData
	Task *task.Task
}

// taskPage: GET /ui/tasks/{taskId} → the task's page: its DAG and the
// selected subtask's log, both live (events.go), and the actions a
// TASK_MANAGER may take.
func (c *Console) taskPage(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "taskId")
	if err == nil {
		var t *task.Task
		if t, err = c.cfg.Tasks.GetTask(r.Context(), id); err == nil {
			c.render(w, r, http.StatusOK, "task", taskData{pageData: c.data(sessionOf(r.Context()), t.Name, ""), Task: t})
			return
		}
	}
	c.renderError(w, r, "Task", err)
}
