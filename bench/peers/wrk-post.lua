-- wrk script for `make bench`: the syncLicenses POST, as the clients send it.
wrk.method = "POST"
wrk.body = ""
wrk.headers["Authorization"] = "Bearer bench-token"
wrk.headers["Accept"] = "application/json"
wrk.headers["Content-Length"] = "0"
