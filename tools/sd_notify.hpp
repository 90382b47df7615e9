// sd_notify: the service manager's readiness protocol (systemd's sd_notify(3), without
// libsystemd). `ferry serve` under Type=notify says READY=1 once it listens and
// STOPPING=1 when it stops.
#pragma once

#include <string>

namespace ferry::cli {

// Sends `state` ("READY=1\nSTATUS=...") as one datagram to $NOTIFY_SOCKET: a path, or an
// abstract socket when it starts with '@'. False when there is no such socket (not under
// a service manager) or the send failed; nothing else happens then.
bool sd_notify(const std::string& state);

// True when stderr goes to the systemd journal ($JOURNAL_STREAM names stderr's device and
// inode): lines then carry a "<N>" priority prefix and no timestamp.
bool stderr_is_journal();

}  // namespace ferry::cli
