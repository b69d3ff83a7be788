// The web root: on to noVNC's page with whaletop's defaults for what the address does
// not say.  noVNC reads its parameters from the query and from the fragment.  With
// sign-in the page needs no VNC password (the desktop's relay logs in for the session,
// with the role's rights); a viewer's page starts watch-only.
const defaults = { autoconnect: "true", resize: "remote", reconnect: "true" };
const query = new URLSearchParams(location.search);
for (const [name, value] of Object.entries(defaults)) {
    if (!query.has(name)) query.set(name, value);
}
const fragment = new URLSearchParams(location.hash.slice(1));
try {
    // 404 without sign-in; with it, who signed in and their role.
    const answer = await fetch("auth/session", { cache: "no-store", credentials: "same-origin" });
    if (answer.ok) {
        const session = await answer.json();
        if (session.role === "viewer") fragment.set("view_only", "true");
    }
} catch (error) {
    // No sign-in service: noVNC asks for the VNC password itself.
}
const hash = fragment.toString();
location.replace("vnc.html?" + query.toString() + (hash ? "#" + hash : ""));
