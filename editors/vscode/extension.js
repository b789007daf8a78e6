// Starts `rlx lsp` for .rlx files. The server does the work; this only launches it.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("rlx").get("path") || "rlx";
  const server = { command, args: ["lsp"] };
  client = new LanguageClient(
    "rlx",
    "rlx language server",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "rlx" }, { scheme: "untitled", language: "rlx" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
