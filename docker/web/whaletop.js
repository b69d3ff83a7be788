// whaletop's additions to noVNC's page (loaded by vnc.html).
//  - The VNC password handed over in the address's fragment is taken out of the address
//    bar and the history once noVNC has connected (noVNC keeps it for reconnecting).
//  - With sign-in: who is signed in, and a Sign out button.
//  - Files in and out (whaletop-files.js).
import UI from "./app/ui.js";
import "./whaletop-keys.js";
import "./whaletop-files.js";
import "./whaletop-sound.js";

function forgetPassword() {
    if (!new URLSearchParams(location.hash.slice(1)).has("password")) return;
    const timer = setInterval(() => {
        if (UI.rfb && UI.connected) {
            clearInterval(timer);
            history.replaceState(null, "", location.pathname + location.search);
        }
    }, 250);
}

async function signOutButton() {
    let answer;
    try {
        answer = await fetch("auth/session", { cache: "no-store", credentials: "same-origin" });
    } catch (error) {
        return;
    }
    if (!answer.ok) return;  // no sign-in on this desktop
    const session = await answer.json();
    const form = document.createElement("form");
    form.id = "whaletop_signout";
    form.method = "post";
    form.action = "auth/signout";
    form.style.cssText = "position:fixed;top:4px;right:4px;z-index:1000;margin:0;" +
        "font:12px sans-serif;opacity:.85";
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Sign out " + session.user + (session.role === "viewer" ? " (watching)" : "");
    form.appendChild(button);
    document.body.appendChild(form);
}

forgetPassword();
signOutButton();
