// Security keys (WebAuthn): the console's second script, on the key pages only. A form with
// data-webauthn="create" (register) or "get" (log in) carries the server's options in
// data-options; on submit the browser asks the key, and the form is posted with its answer in
// the hidden "credential" field. The server checks everything; nothing here is trusted.
"use strict";
(function () {
  function toBytes(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      return { type: item.type, id: toBytes(item.id), transports: item.transports };
    });
  }

  function publicKey(kind, options) {
    options.challenge = toBytes(options.challenge);
    if (kind === "create") {
      options.user.id = toBytes(options.user.id);
      options.excludeCredentials = descriptors(options.excludeCredentials);
    } else {
      options.allowCredentials = descriptors(options.allowCredentials);
    }
    return options;
  }

  function answer(credential) {
    var response = credential.response;
    var json = {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: toText(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      json.response.attestationObject = toText(response.attestationObject);
      json.response.transports = response.getTransports ? response.getTransports() : [];
    } else {
      json.response.authenticatorData = toText(response.authenticatorData);
      json.response.signature = toText(response.signature);
      if (response.userHandle) { json.response.userHandle = toText(response.userHandle); }
    }
    return JSON.stringify(json);
  }

  // The buttons stay disabled until this script runs (without it they could only post an
  // empty answer, which ends the login's key step).
  Array.prototype.forEach.call(document.querySelectorAll("form[data-webauthn]"), function (form) {
    var status = form.querySelector("[role=status]");
    if (!window.PublicKeyCredential) {
      status.textContent = "This browser does not support security keys here.";
      return;
    }
    form.querySelector("button[type=submit]").disabled = false;
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var kind = form.getAttribute("data-webauthn");
    if (kind !== "create" && kind !== "get") { return; }
    event.preventDefault();
    // One ceremony at a time: a second click while the key is asked does nothing.
    if (form.getAttribute("data-busy") === "yes") { return; }
    var status = form.querySelector("[role=status]");
    if (!window.PublicKeyCredential) {
      status.textContent = "This browser does not support security keys here.";
      return;
    }
    var done = function () { form.removeAttribute("data-busy"); };
    form.setAttribute("data-busy", "yes");
    try {
      var options = publicKey(kind, JSON.parse(form.getAttribute("data-options")));
      var asking = kind === "create" ? navigator.credentials.create({ publicKey: options })
                                     : navigator.credentials.get({ publicKey: options });
      status.textContent = "Waiting for your security key…";
      asking.then(function (credential) {
        try {
          form.querySelector("input[name=credential]").value = answer(credential);
          status.textContent = "Checking…";
          form.submit();
        } catch (error) {
          done();
          status.textContent = "The security key's answer could not be sent (" +
            (error && error.name || "error") + "): try again.";
        }
      }, function (error) {
        done();
        status.textContent = "The security key did not answer (" +
          (error && error.name || "error") + "): try again.";
      });
    } catch (error) {
      done();
      status.textContent = "The security key could not be asked (" +
        (error && error.name || "error") + "): try again.";
    }
  });
}());
