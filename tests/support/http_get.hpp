// http_get: a blocking HTTP/1.1 GET to a loopback HOST:PORT (numeric), for tests of the
// metrics endpoint. Returns the whole response (status line, headers, body); the server
// closes the connection after one reply.
#pragma once

#include <string>

namespace ferry::test {

std::string http_get(const std::string& address, const std::string& path);

}  // namespace ferry::test
