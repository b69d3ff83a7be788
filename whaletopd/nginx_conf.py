"""nginx's configuration, written from Config: the only TCP listener of the desktop.

nginx serves noVNC's files (compressed, with validators), proxies the WebSocket to
websockify's UNIX socket, terminates TLS (a rotated certificate is a graceful reload:
connected sessions stay), limits new connections per client address, checks the
WebSocket's Origin, and asks the sign-in service (webauth.py) before anything when
sign-in is on.  Its access log is JSON lines on stdout, which whaletopd re-emits with
`source: nginx`.

whaletopd's own health checks carry a per-start secret header (the probe token): they
are never rate-limited and never logged, so no client can lock them out and they do
not drown the log.  They reach nginx on a UNIX socket of their own, in a folder only
whaletopd's account can enter (Paths.probe_dir): a flood of the web port (its accept
queue, one address's limits) never stands in their way.

Floods of connections that never finish a request (slowloris: a header sent a byte at
a time; slow bodies) are capped by time, not by a per-address count: nginx counts a
request per address (limit_conn) only once its header is read.  A connection has
HEADER_TIMEOUT to send its whole header (nginx's timer runs from the connection's
start, however slowly bytes trickle in), BODY_TIMEOUT between two reads of a body, and
a refused request's unread body is drained for at most LINGER_TIME; a connection that
times out is reset (its buffers freed at once).  So one address holds at most its
connection rate times HEADER_TIMEOUT half-open connections (slowhttptest's 200 a second:
2,000), and WORKER_CONNECTIONS is sized well above that.  Once its header is read, a
request counts against REQUESTS_PER_ADDRESS (WebSockets and /files/ against their own
caps), which caps slow bodies and slow readers per address.  What no setting here
stops: many addresses, or one opening more than WORKER_CONNECTIONS / HEADER_TIMEOUT
connections a second; that is a firewall's job (connlimit) in front of the desktop.

/metrics is the file whaletopd keeps (metrics.py), served as it is: open like the page
when no sign-in is configured and no METRICS_TOKEN is set; with a token, only to a
request that carries it (`Authorization: Bearer TOKEN`, compared exactly), 401 to any
other before anything else; with sign-in and no token, off (404).  The token is only in
this file (0600); the access log has the path and no header of the request.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from whaletopd import filedav, link
from whaletopd.config import METRICS_TOKEN_RE, Config
from whaletopd.kbswitch import MAX_BODY as KEYBOARD_BODY
from whaletopd.metrics import CONTENT_TYPE
from whaletopd.paths import Paths
from whaletopd.probes import PROBE_HEADER

# A burst of new WebSocket connections beyond --connection-rate: half served at once,
# half slowed to the rate, then refused (429).
CONNECTION_BURST = 20
CONNECTION_BURST_UNDELAYED = 10
# Open desktop connections from one address (several tabs, a viewer or two).
CONNECTIONS_PER_ADDRESS = 20
# Half-open connections (see the module's docstring).  A browser sends its header in one
# packet; 10 s leave room for a slow link's TLS handshake.
HEADER_TIMEOUT = "10s"
BODY_TIMEOUT = "10s"
LINGER_TIME = "10s"
# Requests in progress from one address outside the WebSocket and /files/ locations
# (a page load is about six at once; a few browsers behind one NAT).
REQUESTS_PER_ADDRESS = 64
# One worker's connections: a client's take one, a proxied one two (its descriptors:
# twice as many, and nginx's own files).  ~430 bytes each, allocated at start (~3.5 MiB).
WORKER_CONNECTIONS = 8192
WORKER_FILES = 2 * WORKER_CONNECTIONS
MIME_TYPES = Path("/etc/nginx/mime.types")
# TLS 1.2's suites: Mozilla's "intermediate" (guideline 5.7) without its DHE ones, which
# only clients without ECDHE would take and which need a DH group nginx does not have
# by default.  AEAD with forward secrecy only: no CBC (LUCKY13), no RSA key exchange.
# TLS 1.3's suites are OpenSSL's, all AEAD, as Mozilla's.
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))


@dataclass(frozen=True)
class FrontDoorSpec:
    """What the configuration is made of besides Config."""

    probe_token: str
    tls_pem: Path | None = None
    worker_user: str | None = None  # None when whaletopd itself does not run as root
    mime_types: Path = MIME_TYPES
    # Without sign-in: the cookie /sound/ticket gives for the VNC password (per start).
    sound_token: str = field(default_factory=lambda: secrets.token_hex(16))


def _headers(config: Config) -> list[str]:
    """Response headers of every location: nginx drops the server's add_header lines in
    a location that has its own, so each location gets all of them."""
    lines = [
        'add_header X-Frame-Options "SAMEORIGIN" always;',
        "add_header Content-Security-Policy \"frame-ancestors 'self'\" always;",
        'add_header X-Content-Type-Options "nosniff" always;',
        'add_header Referrer-Policy "same-origin" always;',
    ]
    if config.tls:
        lines.append('add_header Strict-Transport-Security "max-age=31536000" always;')
    return lines


def _block(header: str, body: list[str], indent: str = "    ") -> list[str]:
    return [f"{header} {{", *(indent + line for line in body), "}"]


def _metrics(config: Config, paths: Paths, headers: list[str]) -> list[str]:
    """The location of /metrics (no auth_request: a scraper has no session)."""
    token = config.metrics_token
    if not token and config.sign_in:
        return _block("location = /metrics", ["return 404;"])
    body: list[str] = []
    if token:
        if not METRICS_TOKEN_RE.fullmatch(token):  # Config refused it already
            raise ValueError("the metrics token must be a token, never nginx syntax")
        # `if`'s string comparison is exact (a map's would ignore case).
        body += _block(f'if ($http_authorization != "Bearer {token}")', [
            *headers,
            "add_header WWW-Authenticate 'Bearer realm=\"whaletop metrics\"' always;",
            "return 401;"])
    return _block("location = /metrics", [
        *body,
        *headers,
        'add_header Cache-Control "no-store" always;',
        *_block("types", [], ""),
        f'default_type "{CONTENT_TYPE}";',
        "charset off;",
        f"alias {paths.metrics_file};",
    ])


def _keyboard(config: Config, paths: Paths, gate: list[str],
              headers: list[str]) -> list[str]:
    """/whaletop/keyboard: the session's layout for the page (whaletop-keys.js), the
    file kbswitch.py rewrites when it changes; behind the same sign-in as the page.

    /whaletop/keyboard/layout: the page's request to switch it, a PUT that nginx's
    WebDAV module writes into the requests folder (kbswitch.py watches it), as
    `layout.NAME`, NAME as the sign-in service or HTTP Basic named the person.  Only
    full access: with sign-in the sign-in service answers 403 to a viewer; without, the
    page sends HTTP Basic with the desktop's user name and the full VNC password, which
    nginx checks against the hashed file it checks /files/ with (filedav.py).
    """
    info = _block("location = /whaletop/keyboard", [
        *gate, *headers, 'add_header Cache-Control "no-store" always;',
        *_block("types", [], ""),
        "default_type application/json;",
        f"alias {paths.keyboard_file};",
    ])
    if config.sign_in:
        who = "$whaletop_user"
        auth = ["auth_request /auth/check-full;",
                "auth_request_set $whaletop_user $upstream_http_x_whaletop_user;"]
    else:
        who = "$remote_user"  # only the one name of the file, once its password matched
        auth = ['auth_basic "whaletop (the VNC password)";',
                f"auth_basic_user_file {filedav.htpasswd_path(paths)};"]
    return [*info, *_block("location = /whaletop/keyboard/layout", [
        # Another site's page must not switch it with this browser's session.
        "if ($whaletop_cross_origin) { return 403; }",
        *_block("limit_except PUT", ["deny all;"]),
        # Password guesses: as slow as at the sign-in page.
        "limit_req zone=signin burst=20 nodelay;",
        *auth,
        f"client_max_body_size {KEYBOARD_BODY};",
        f"client_body_buffer_size {KEYBOARD_BODY};",
        "dav_methods PUT;",
        "dav_access user:rw;",
        *headers,
        'add_header Cache-Control "no-store" always;',
        # Names never hold '/' (webusers.NAME_RE, config.validate_username).
        f"alias {paths.requests_dir}/layout.{who};",
    ])]
def _scheme(proxies: list[str]) -> list[str]:
    """$whaletop_scheme: the scheme the browser uses, which its Origin must name.  The
    connection's; behind a trusted proxy (--trusted-proxy), the one it says it received
    (X-Forwarded-Proto), since a proxy that terminates TLS speaks plain HTTP to us."""
    if not proxies:
        return _block("map $scheme $whaletop_scheme", ["default $scheme;"])
    return [
        *_block("geo $realip_remote_addr $whaletop_via_proxy",
                ["default 0;", *(f"{cidr} 1;" for cidr in proxies)]),
        *_block('map "$whaletop_via_proxy|$http_x_forwarded_proto" $whaletop_scheme',
                ['"1|https" https;', '"1|http" http;', "default $scheme;"]),
    ]


def _link_defaults(config: Config, headers: list[str]) -> list[str]:
    """noVNC's defaults.json (its quality and compression levels) for --link, from
    link.py: the page reads it at start.  Nothing secret: answered before any sign-in
    check (`return` comes before nginx's access phase)."""
    body = link.novnc_defaults(config.link)
    if "'" in body or "\\" in body:  # JSON of numbers: never nginx syntax
        raise ValueError("noVNC's defaults must be plain JSON")
    return _block("location = /defaults.json", [
        *headers,
        'add_header Cache-Control "no-cache" always;',
        "default_type application/json;",
        f"return 200 '{body}';",
    ])
# A file name as sent: 1 to 255 bytes once decoded (the filesystem's NAME_MAX), each a
# %XX or a byte that is neither '/' nor '%' (nginx's regular expressions count bytes).
NAME = "(?:%[0-9A-Fa-f]{2}|[^/%]){1,255}"
# What a path under /files/ asks for (the path as sent, before nginx decodes and
# normalizes it): the first match wins.  "bad": a name with '/', '.', '..', NUL or
# another control character (percent-encoded too: raw ones never pass nginx's parser),
# a subfolder, or a name too long; "": no such thing (404).
FILES_ASK = (
    ("~%(?:[01][0-9A-Fa-f]|7[Ff]|2[Ff])", "bad"),
    ("~/(?:\\.|%2[Ee]){1,2}(?:/|$)", "bad"),
    ("~^/files/$", "about"),
    (f"~^/files/{filedav.UPLOAD_FOLDER}/{NAME}$", "put"),
    (f"~^/files/{filedav.DOWNLOAD_FOLDER}/$", "list"),
    (f"~^/files/{filedav.DOWNLOAD_FOLDER}/{NAME}$", "get"),
    (f"~^/files/(?:{filedav.UPLOAD_FOLDER}|{filedav.DOWNLOAD_FOLDER})(?:/|$)", "bad"),
)
# Why a request to /files/ was refused, for its log line (status|cross-origin|role).
FILES_REFUSALS = (
    ("~^400", "bad file name: '/', '.', '..', control characters, subfolders and names "
              "over 255 bytes are refused"),
    ("~^401", "no or wrong credentials"),
    ("~^403\\|1", "another site's page asked (its Origin is not this desktop)"),
    ("~^403\\|0\\|viewer", "watch-only access (a viewer) cannot transfer files"),
    ("~^403", "a link, or a folder that is not one (links are never followed)"),
    ("~^404", "no such file, or not a folder for files (Desktop/ and Downloads/ only)"),
    ("~^405", "method not allowed: PUT into Desktop/, GET from Downloads/"),
    ("~^409", "~/Desktop is missing or not a folder"),
    ("~^413", "larger than --max-upload"),
    ("~^429", "too many requests from this address"),
    ("~^5", "the file server failed (see its lines)"),
)
FILES_RATE = 60  # requests per minute from one address, after a burst as large
# Methods per kind of request (GET lets HEAD through).
FILES_METHODS = {"put": ("PUT",), "list": ("GET", "HEAD"), "get": ("GET", "HEAD")}


def _files(config: Config, paths: Paths, headers: list[str],
           gate: list[str]) -> tuple[list[str], list[str]]:
    """/files/ (filedav.py): the lines of the http block and of the server block.  Off
    (--no-file-transfer): 404.  Every request is logged with why it was refused."""
    if not config.file_transfer:
        return [], _block("location ^~ /files/", ["return 404;"])
    sign_in = config.sign_in
    # With sign-in, who the sign-in service named; else the name HTTP Basic gave, once
    # its password was right.
    user = "$whaletop_user" if sign_in else "$whaletop_files_user"
    methods = [f'"{ask}|{method}" 0;' for ask, allowed in FILES_METHODS.items()
               for method in allowed]
    http = [
        *_block("map $whaletop_path $whaletop_files_ask",
                [*(f'"{k}" {v};' for k, v in FILES_ASK), 'default "";']),
        *_block('map "$whaletop_files_ask|$request_method" $whaletop_files_bad_method',
                [*methods, "default 1;"]),
        *_block('map "$status|$whaletop_cross_origin|$whaletop_files_role" '
                '$whaletop_files_refused',
                [*(f'"{k}" "{v}";' for k, v in FILES_REFUSALS), 'default "";']),
        *_block("map $whaletop_files_refused $whaletop_files_level",
                ['"" info;', "default warning;"]),
        f"limit_req_zone $whaletop_client zone=files:1m rate={FILES_RATE}r/m;",
        "log_format whaletop_files escape=json '{\"event\":\"request\","
        "\"level\":\"$whaletop_files_level\",\"client\":\"$remote_addr\","
        "\"method\":\"$request_method\",\"path\":\"$whaletop_path\","
        "\"status\":$status,\"bytes\":$body_bytes_sent,\"received\":$request_length,"
        f"\"seconds\":$request_time,\"user\":\"{user}\","
        "\"refused\":\"$whaletop_files_refused\",\"user_agent\":\"$http_user_agent\"}';",
        *_block("upstream whaletop_files", [f"server unix:{filedav.socket_path(paths)};"]),
    ]
    if not sign_in:
        http += _block('map "$status|$remote_user" $whaletop_files_user',
                       ['"~^401" "";', '"~^[0-9]+\\|(?<name>.*)$" $name;'])
    about = filedav.about(config)
    if "'" in about or "\\" in about:
        raise ValueError("the /files/ description must not hold quotes or backslashes")
    auth = (
        [*gate, "auth_request_set $whaletop_files_role $upstream_http_x_whaletop_role;"]
        if sign_in else
        ['auth_basic "whaletop files (the VNC password)";',
         f"auth_basic_user_file {filedav.htpasswd_path(paths)};"])
    server = [
        # nginx normalizes ../ before it picks a location: a bad raw path is refused
        # here whatever location it would land in.
        *_block('if ($whaletop_files_ask = "bad")', ["rewrite ^ /files/ last;"]),
        *_block("location ^~ /files/", [
            "access_log /dev/stdout whaletop_files if=$whaletop_loggable;",
            *([] if sign_in else ['set $whaletop_files_role "full";']),
            'if ($whaletop_files_ask = "bad") { return 400; }',
            "default_type application/json;",
            *_block('if ($whaletop_files_ask = "about")',
                    [*headers, 'add_header Cache-Control "no-store" always;',
                     f"return 200 '{about}';"]),
            'if ($whaletop_files_ask = "") { return 404; }',
            # Another site's page must not use this browser's session (a PUT is
            # preflighted anyway; a listing must not be read either).
            "if ($whaletop_cross_origin) { return 403; }",
            "if ($whaletop_files_bad_method) { return 405; }",
            f"limit_req zone=files burst={FILES_RATE} nodelay;",
            f"limit_conn open {CONNECTIONS_PER_ADDRESS};",
            *auth,
            f"client_max_body_size {config.max_upload_bytes};",
            *headers,
            'add_header Cache-Control "no-store" always;',
            "proxy_pass http://whaletop_files;",
            # Streamed both ways: a 2 GiB upload is written once, by the file server.
            "proxy_request_buffering off;",
            "proxy_buffering off;",
            "proxy_http_version 1.1;",
            'proxy_set_header Cookie "";',
            'proxy_set_header Authorization "";',
            f'proxy_set_header {PROBE_HEADER} "";',
            f"proxy_set_header {filedav.ROLE_HEADER} $whaletop_files_role;",
            "proxy_read_timeout 300s;",
            "proxy_send_timeout 300s;",
        ]),
    ]
    if sign_in:
        server.insert(0, 'set $whaletop_files_role "";')
    return http, server
def _websocket_to(upstream: str) -> list[str]:
    """A WebSocket passed on to a child of the desktop user's (websockify, the sound
    bridge): none of the client's credentials go with it, and it may stay open for days."""
    return [
        f"proxy_pass http://{upstream};",
        'proxy_set_header Cookie "";',
        'proxy_set_header Authorization "";',
        f'proxy_set_header {PROBE_HEADER} "";',
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        'proxy_set_header Connection "upgrade";',
        "proxy_set_header Host $http_host;",
        "proxy_buffering off;",
        "proxy_read_timeout 7d;",
        "proxy_send_timeout 7d;",
    ]


def _sound(config: Config, paths: Paths, gate: list[str], headers: list[str],
           token: str) -> list[str]:
    """/sound: the sound bridge's WebSocket (whaletopd/sound.py), behind the same sign-in
    and Origin check as the desktop's (viewers listen too); 404 with --no-sound.

    Without sign-in the desktop's own WebSocket is guarded by VNC's password inside the
    RFB protocol, which nginx never sees; the sound is guarded by it too: the page asks
    /sound/ticket with HTTP Basic (the desktop's user name and the full VNC password,
    checked against the hashed copy /files/ uses), and gets a cookie holding a secret of
    this start, which /sound then requires (a browser's WebSocket carries cookies, not
    an Authorization header)."""
    if not config.sound:
        return _block("location ^~ /sound", ["access_log off;", "return 404;"])
    ticket: list[str] = []
    cookie_check: list[str] = []
    if not config.sign_in:
        if not (token.isascii() and token.isalnum() and len(token) >= 32):
            raise ValueError("the sound token must be 32 or more letters and digits")
        cookie = f"whaletop_sound_{config.web_port}"
        secure = "; Secure" if config.tls else ""
        ticket = _block("location = /sound/ticket", [
            "if ($whaletop_cross_origin) { return 403; }",
            *_block("limit_except GET", ["deny all;"]),
            # Password guesses: as slow as at the sign-in page.
            "limit_req zone=signin burst=20 nodelay;",
            'auth_basic "whaletop (the VNC password)";',
            f"auth_basic_user_file {filedav.htpasswd_path(paths)};",
            *headers,
            'add_header Cache-Control "no-store" always;',
            # No Path: the ticket's folder, so a reverse proxy's prefix is kept.
            f'add_header Set-Cookie "{cookie}={token}; HttpOnly; SameSite=Strict{secure}";',
            # A content handler, so auth_basic (access phase) runs first: a `return`
            # would answer in the rewrite phase, before any check.
            "empty_gif;",
        ])
        cookie_check = [f'if ($cookie_{cookie} != "{token}") {{ return 401; }}']
    return ticket + _block("location = /sound", [
        *gate,
        "if ($whaletop_cross_origin) { return 403; }",
        *cookie_check,
        f"limit_req zone=connections burst={CONNECTION_BURST} "
        f"delay={CONNECTION_BURST_UNDELAYED};",
        f"limit_conn open {CONNECTIONS_PER_ADDRESS};",
        *headers,
        *_websocket_to(f"unix:{paths.sound_socket}:"),
    ])


def render(config: Config, paths: Paths, spec: FrontDoorSpec) -> str:
    token = spec.probe_token
    if not (token.isascii() and token.isalnum()):
        raise ValueError("the probe token must be alphanumeric")
    tmp = paths.nginx_dir / "tmp"
    headers = _headers(config)
    sign_in = config.sign_in
    rate = config.connection_rate

    http: list[str] = [
        f"include {spec.mime_types};",
        "default_type application/octet-stream;",
        "server_tokens off;",
        "sendfile on;",
        "tcp_nodelay on;",
        "keepalive_timeout 65s;",
        f"client_header_timeout {HEADER_TIMEOUT};",
        f"client_body_timeout {BODY_TIMEOUT};",
        f"lingering_time {LINGER_TIME};",
        "reset_timedout_connection on;",
        "charset utf-8;",
        "charset_types text/css application/javascript application/json;",
        f"client_body_temp_path {tmp}/body;",
        f"proxy_temp_path {tmp}/proxy;",
        f"fastcgi_temp_path {tmp}/fastcgi;",
        f"uwsgi_temp_path {tmp}/uwsgi;",
        f"scgi_temp_path {tmp}/scgi;",
        "gzip on;",
        "gzip_vary on;",
        "gzip_min_length 512;",
        "gzip_types text/css application/javascript text/javascript application/json "
        "image/svg+xml;",
    ]
    proxies = [str(ipaddress.ip_network(c, strict=False)) for c in config.trusted_proxies]
    if proxies:
        http += [f"set_real_ip_from {cidr};" for cidr in proxies]
        http += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    http += _scheme(proxies)
    http += [
        # whaletopd's health checks: never limited, never logged.
        *_block(f"map $http_{PROBE_HEADER.lower().replace('-', '_')} $whaletop_probe",
                [f'"{token}" 1;', "default 0;"]),
        *_block("map $whaletop_probe $whaletop_client", ['1 "";',
                                                        "default $binary_remote_addr;"]),
        *_block("map $whaletop_probe $whaletop_loggable", ["1 0;", "default 1;"]),
        # A browser's Origin, scheme://host[:port]; "" when there is none (not a browser).
        *_block("map $http_origin $whaletop_origin_host",
                ['"" "";', '"~^(?<origin_host>https?://[^/]+)$" $origin_host;',
                 'default "(invalid)";']),
        # 1 when a browser's Origin is not this site as the browser reaches it: another
        # host, or the same over the other scheme (a backreference compares the two; no
        # Origin is not a browser, and passes).  A page on http:// is another origin for
        # an https:// desktop: anyone on the network can write it.
        *_block('map "$whaletop_origin_host|$whaletop_scheme://$http_host" '
                '$whaletop_cross_origin',
                ['"~^(\\|.*|([^|]+)\\|\\2)$" 0;', "default 1;"]),
        # The path as the client asked for it, without its query: noVNC's ?password=...
        # never reaches the log.
        *_block("map $request_uri $whaletop_path", ['"~^(?<asked>[^?]*)" $asked;']),
        f"limit_req_zone $whaletop_client zone=connections:1m rate={rate}r/m;",
        "limit_req_zone $whaletop_client zone=signin:1m rate=30r/m;",
        "limit_conn_zone $whaletop_client zone=open:1m;",
        "limit_conn_zone $whaletop_client zone=requests:1m;",
        "limit_req_status 429;",
        "limit_conn_status 429;",
        "limit_req_log_level warn;",
        "limit_conn_log_level warn;",
        "log_format whaletop escape=json '{\"event\":\"request\",\"level\":\"info\","
        "\"client\":\"$remote_addr\",\"method\":\"$request_method\",\"path\":\"$whaletop_path\","
        "\"status\":$status,\"bytes\":$body_bytes_sent,\"seconds\":$request_time,"
        "\"user\":\"$whaletop_user\",\"user_agent\":\"$http_user_agent\"}';",
        "access_log /dev/stdout whaletop if=$whaletop_loggable;",
        *_block("upstream websockify", [f"server unix:{paths.websockify_socket};"]),
    ]
    if sign_in:
        http += _block("upstream webauth", [f"server unix:{paths.auth_socket};"])

    server: list[str] = []
    ssl = " ssl" if config.tls else ""
    server += [
        f"listen {config.web_port}{ssl};",
        # whaletopd's health checks only (the module's docstring): TLS too, so they
        # prove the certificate served.  nginx makes it 0666; its folder is 0700.
        f"listen unix:{paths.probe_socket}{ssl};",
    ]
    if config.tls:
        assert spec.tls_pem is not None, "TLS needs the certificate's file"
        server += [
            f"ssl_certificate {spec.tls_pem};",
            f"ssl_certificate_key {spec.tls_pem};",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            f"ssl_ciphers {TLS12_CIPHERS};",
            "ssl_prefer_server_ciphers off;",
            # Tickets' key is never rotated while nginx runs: no forward secrecy.
            "ssl_session_tickets off;",
            "ssl_session_cache shared:tls:1m;",
            "ssl_session_timeout 1d;",
            # Plain HTTP sent to the HTTPS port: send the browser to https.
            "error_page 497 =301 https://$host:$server_port$request_uri;",
        ]
    server += [
        f"root {paths.novnc_dir};",
        "index index.html;",
        "autoindex off;",
        # Relative redirects: deployments on a sub-path behind a proxy keep working.
        "absolute_redirect off;",
        'set $whaletop_user "";',
        # Slow bodies and slow readers: requests in progress per address (locations
        # with a limit_conn of their own keep only theirs).
        f"limit_conn requests {REQUESTS_PER_ADDRESS};",
    ]
    gate: list[str] = []
    if sign_in:
        gate = ["auth_request /auth/check;",
                "auth_request_set $whaletop_user $upstream_http_x_whaletop_user;"]

    # noVNC's files: revalidated (ETag, Last-Modified), so an upgraded image is seen.
    static = [*gate, *headers, 'add_header Cache-Control "no-cache" always;',
              "try_files $uri $uri/ =404;"]
    if sign_in:
        static.append("error_page 401 = @signin;")
    server += _block("location /", static)

    # Who the relay (vncrelay.py) serves: with sign-in, the person, their role and
    # their grant as the sign-in service named them (the relay logs in to Xvnc for the
    # role, and closes the connection when the grant ends); never what a client sent.
    relay_headers = [f"proxy_set_header X-Whaletop-{name.title()} "
                     + (f"$whaletop_{name};" if sign_in else '"";')
                     for name in ("user", "role", "grant")]
    websocket = [
        *gate,
        *([f"auth_request_set $whaletop_{name} $upstream_http_x_whaletop_{name};"
           for name in ("role", "grant")] if sign_in else []),
        # A page of another site must not open the desktop with this browser's
        # credentials: browsers always send Origin on a WebSocket.
        "if ($whaletop_cross_origin) { return 403; }",
        f"limit_req zone=connections burst={CONNECTION_BURST} "
        f"delay={CONNECTION_BURST_UNDELAYED};",
        f"limit_conn open {CONNECTIONS_PER_ADDRESS};",
        *headers,
        *_websocket_to("websockify"),
        *relay_headers,
    ]
    server += _block("location = /websockify", websocket)
    server += _metrics(config, paths, headers)
    server += _keyboard(config, paths, gate, headers)
    server += _link_defaults(config, headers)
    files_http, files_server = _files(config, paths, headers, gate)
    http += files_http
    server += files_server
    server += _sound(config, paths, gate, headers, spec.sound_token)

    if not sign_in:
        # The page asks whether sign-in is on; without it, a quiet no.
        server += _block("location = /auth/session", ["access_log off;", "return 404;"])
    if sign_in:
        to_auth = ["proxy_pass http://webauth;",
                   "proxy_set_header Host $http_host;",
                   "proxy_set_header X-Forwarded-Proto $whaletop_scheme;",
                   "proxy_set_header X-Real-IP $remote_addr;"]
        # The checks are subrequests that carry the request's Content-Length but never its
        # body: no body limit there (nginx's default 1 MiB turned every larger upload into
        # a 413 of the check, answered 500).  The location asked for keeps its own limit.
        no_body = ["client_max_body_size 0;", "proxy_pass_request_body off;",
                   'proxy_set_header Content-Length "";']
        server += _block("location = /auth/check", [
            "internal;",
            *to_auth,
            *no_body,
        ])
        # Full access only (not a viewer): 403 from the sign-in service otherwise.
        server += _block("location = /auth/check-full", [
            "internal;",
            "proxy_pass http://webauth/auth/check?need=full;",
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-Real-IP $remote_addr;",
            *no_body,
        ])
        server += _block("location /auth/", [
            "limit_req zone=signin burst=20 nodelay;",
            "client_max_body_size 8k;",
            *to_auth,
        ])
        server += _block("location @signin", [
            "rewrite ^ /auth/redirect break;",
            *to_auth,
            "proxy_set_header X-Original-URI $request_uri;",
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
        ])

    conf = [
        "# Written by whaletopd from its flags at every start; edits here are lost.",
        *([f"user {spec.worker_user};"] if spec.worker_user else []),
        "worker_processes 1;",
        f"worker_rlimit_nofile {WORKER_FILES};",
        "daemon off;",
        f"pid {paths.nginx_dir / 'nginx.pid'};",
        "error_log stderr warn;",
        "pcre_jit on;",
        *_block("events", [f"worker_connections {WORKER_CONNECTIONS};"]),
        *_block("http", [*http, *_block("server", server)]),
    ]
    return "\n".join(conf) + "\n"
