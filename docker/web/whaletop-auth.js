// The default mode's credentials for whaletop's own requests (files/, the keyboard
// switch, the sound's ticket): nginx checks HTTP Basic with the desktop's user name and
// the full VNC password, the one typed into noVNC (or handed over in the address).
// With sign-in the page's session cookie does instead, and nothing here is used.
import UI from "./app/ui.js";

export function vncPassword() {
    const creds = UI.rfb && UI.rfb._rfbCredentials;
    if (creds && creds.password) return creds.password;
    return new URLSearchParams(location.hash.slice(1)).get("password") ||
        new URLSearchParams(location.search).get("password");
}

// {Authorization: "Basic ..."} for `user` and the VNC password; null when the page has
// no password yet (not connected).
export function basicAuth(user) {
    const password = vncPassword();
    if (!password) return null;
    const bytes = new TextEncoder().encode(user + ":" + password);
    return { Authorization: "Basic " + btoa(String.fromCharCode(...bytes)) };
}
