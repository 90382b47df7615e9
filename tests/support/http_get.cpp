#include "tests/support/http_get.hpp"

#include <asio.hpp>

namespace ferry::test {

std::string http_get(const std::string& address, const std::string& path) {
    asio::io_context io;
    asio::ip::tcp::socket s(io);
    std::size_t colon = address.rfind(':');
    s.connect({asio::ip::make_address(address.substr(0, colon)),
               static_cast<unsigned short>(std::stoi(address.substr(colon + 1)))});
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n";
    asio::write(s, asio::buffer(req));
    std::string out;
    std::error_code ec;
    asio::read(s, asio::dynamic_buffer(out), ec);
    return out;
}

}  // namespace ferry::test
