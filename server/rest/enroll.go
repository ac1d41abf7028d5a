package rest

// enrollRoutes are the routes of agent identity: join tokens and host revocation.
func (s *server) enrollRoutes() []route {
	return nil
}
