"""The analyst console: staff accounts and logins, the HTML pages, the JSON API and the
actions on cases (assess, approve, reopen, reassign, route), each audited."""
