package rest

// iamRoutes are the routes of access keys.
func (s *server) iamRoutes() []route {
	return nil
}
