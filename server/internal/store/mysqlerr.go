package store

import (
	"database/sql/driver"
	"errors"
	"net"
	"syscall"

	"github.com/go-sql-driver/mysql"
)

// MySQL server error numbers the store tells apart.
const (
	erDupEntry              = 1062 // a unique key taken: ErrConflict, as SQLite's UNIQUE
	erLockWaitTimeout       = 1205 // retried by the writer
	erLockDeadlock          = 1213 // retried by the writer
	erUnknownSystemVariable = 1193
)

// mysqlUnavailable are the server's errors that say the database, not the
// statement, failed: it is shutting down, out of connections or resources,
// read-only, or killed the session.
var mysqlUnavailable = map[uint16]bool{
	1021: true, // ER_DISK_FULL
	1040: true, // ER_CON_COUNT_ERROR: too many connections
	1041: true, // ER_OUT_OF_RESOURCES
	1053: true, // ER_SERVER_SHUTDOWN
	1077: true, // ER_NORMAL_SHUTDOWN
	1078: true, // ER_GOT_SIGNAL
	1079: true, // ER_SHUTDOWN_COMPLETE
	1080: true, // ER_FORCING_CLOSE
	1114: true, // ER_RECORD_FILE_FULL
	1152: true, // ER_ABORTING_CONNECTION
	1153: true, // ER_NET_PACKET_TOO_LARGE
	1154: true, // ER_NET_READ_ERROR_FROM_PIPE
	1158: true, // ER_NET_READ_ERROR
	1159: true, // ER_NET_READ_INTERRUPTED
	1160: true, // ER_NET_ERROR_ON_WRITE
	1161: true, // ER_NET_WRITE_INTERRUPTED
	1205: true, // ER_LOCK_WAIT_TIMEOUT, once the writer's retries are spent
	1213: true, // ER_LOCK_DEADLOCK, likewise
	1290: true, // ER_OPTION_PREVENTS_STATEMENT: --read-only
	1792: true, // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
	1836: true, // ER_READ_ONLY_MODE
	1927: true, // ER_CONNECTION_KILLED (MariaDB)
	2002: true, // CR_CONNECTION_ERROR
	2003: true, // CR_CONN_HOST_ERROR
	2006: true, // CR_SERVER_GONE_ERROR
	2013: true, // CR_SERVER_LOST
	4031: true, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
}

// mysqlFull reports whether err is the MySQL server's disk or table full.
func mysqlFull(err error) bool {
	return mysqlErrorIs(err, 1021) || mysqlErrorIs(err, 1114)
}

// mysqlErrorIs reports whether err wraps a MySQL server error number.
func mysqlErrorIs(err error, number uint16) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == number
}

// retryable reports whether err is a lost lock (deadlock, lock wait
// timeout): the transaction is run again.
func retryable(err error) bool {
	return err != nil && (mysqlErrorIs(err, erLockDeadlock) || mysqlErrorIs(err, erLockWaitTimeout))
}

// mysqlStoreFailure reports whether err is the MySQL database failing
// rather than the statement: its connection refused, lost or timed out, or
// one of mysqlUnavailable. (Such errors never come from SQLite.)
func mysqlStoreFailure(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return mysqlUnavailable[me.Number]
	}
	// (Not any net.Error: context.DeadlineExceeded is one, and a caller's
	// deadline says nothing of the database.)
	var oe *net.OpError
	var de *net.DNSError
	return errors.As(err, &oe) || errors.As(err, &de) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, mysql.ErrPktSync) || errors.Is(err, mysql.ErrPktSyncMul) || errors.Is(err, mysql.ErrMalformPkt) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}
