package rest

import "net/http"

// clusterRoutes are the routes of the replicas registry; none without
// Config.Replicas.
func (s *server) clusterRoutes() []route {
	if s.cfg.Replicas == nil {
		return nil
	}
	return []route{
		{http.MethodGet, "/replicas", s.listReplicas},
	}
}

// listReplicas: GET /replicas → the replicas sharing this server's store,
// by id, in one page. Any viewer role (the replica service checks).
func (s *server) listReplicas(w http.ResponseWriter, r *http.Request) {
	rs, err := s.cfg.Replicas.List(r.Context())
	if err != nil {
		s.writeError(w, r, err, "")
		return
	}
	out := pageJSON[replicaJSON]{Contents: make([]replicaJSON, 0, len(rs)), Page: newPageRef(int64(len(rs)), 1, max(len(rs), 1))}
	for _, x := range rs {
		out.Contents = append(out.Contents, replicaJSON{
			ID: x.ID, Address: x.Addr, Version: x.Version, StartTime: formatTime(x.Started),
			HeartbeatTime: formatTime(x.Heartbeat), HeartbeatAgeMillis: x.Age.Milliseconds(), Live: x.Live,
		})
	}
	s.writeData(w, r, out)
}

// replicaJSON is one replica as the API shows it; times are the database's
// clock.
type replicaJSON struct {
	ID                 string `json:"id"`
	Address            string `json:"address"`
	Version            string `json:"version"`
	StartTime          string `json:"startTime"`
	HeartbeatTime      string `json:"heartbeatTime"`
	HeartbeatAgeMillis int64  `json:"heartbeatAgeMillis"`
	Live               bool   `json:"live"`
}
