package rest

// auditRoutes are the routes of the audit record.
func (s *server) auditRoutes() []route {
	return nil
}
