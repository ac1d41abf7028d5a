package api

// StoreHealth says whether the data store can be written (store.Store).
type StoreHealth interface {
	// Writable returns nil while the store can be written, else why not (an
	// errs.ErrStoreUnavailable).
	Writable() error
}

// StoreHealthWatcher also tells when that changes (store.Store).
type StoreHealthWatcher interface {
	StoreHealth
	// OnWritable registers fn, called with nil or the failure each time the
	// store turns writable or unwritable; fn must return soon.
	OnWritable(fn func(err error))
}
