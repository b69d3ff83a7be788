// The web root: on to noVNC's page with whaletop's defaults for what the address does
// not say.  noVNC reads its parameters from the query and from the fragment; the VNC
// password the sign-in service gives goes into the fragment, which is never sent to a
// server or written to a log.
const defaults = { autoconnect: "true", resize: "remote", reconnect: "true" };
const query = new URLSearchParams(location.search);
for (const [name, value] of Object.entries(defaults)) {
    if (!query.has(name)) query.set(name, value);
}
const fragment = new URLSearchParams(location.hash.slice(1));
try {
    // 404 without sign-in; with it, who signed in and the VNC password of their role
    // (a viewer's lets the VNC server refuse their keyboard and mouse).
    const answer = await fetch("auth/session", { cache: "no-store", credentials: "same-origin" });
    if (answer.ok) {
        const session = await answer.json();
        fragment.set("password", session.vnc_password);
        if (session.role === "viewer") fragment.set("view_only", "true");
    }
} catch (error) {
    // No sign-in service: noVNC asks for the VNC password itself.
}
const hash = fragment.toString();
location.replace("vnc.html?" + query.toString() + (hash ? "#" + hash : ""));
