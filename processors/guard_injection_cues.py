"""The prompt-injection scorer's multilingual cues: phrase tables per language and the
templates that give them the structure and weights of the English signals.

Data, kept apart from the scorer (processors/guard_injection.py) so the code reads in one sitting
and a new language is a new table here. A test checks every phrase is written already normalized
and every language fills every template field.
"""

from __future__ import annotations

# Faithful translations of the English cues above into the four non-English languages of the
# public corpus, accents folded (normalization folds the text the same way). Plain phrases
# separated by `|`: a space matches any whitespace, everything else is literal. `TEMPLATES`
# gives them structure.
LANG_CUES: dict[str, dict[str, str]] = {
    "it": {
        "override_verb": (
            "ignora|ignorate|ignori|ignorare|dimentica|dimenticate|dimentichi|dimenticare|trascura|"
            "trascurate|tralascia|tralasciate|scarta|scartate|non considerare|non tenere conto di|"
            "non tenere conto delle"
        ),
        "filler": "per favore|pure|ora|adesso|subito",
        "all": "tutte|tutti|ogni",
        "det": "le|i|gli|tue|le tue|i tuoi|sue|le sue|queste|quelle",
        "earlier": (
            "precedenti|precedente|anteriori|sopra|di prima|iniziali|originali|vecchie|di sistema|"
            "del sistema|ricevute"
        ),
        "instructions": (
            "istruzioni|istruzione|regole|indicazioni|direttive|comandi|ordini|linee guida|prompt|"
            "vincoli"
        ),
        "everything_before": (
            "tutto quello che ti e stato detto|tutto cio che ti e stato detto|tutto quanto sopra|"
            "tutto cio che precede|tutto quello sopra"
        ),
        "no_longer_apply": (
            "non valgono piu|non sono piu valide|non si applicano piu|sono annullate|sono revocate|"
            "sono obsolete|non contano piu"
        ),
        "new_instructions": "nuove istruzioni|nuove regole|nuovo prompt di sistema|nuove direttive",
        "from_now_on": (
            "d'ora in poi|da ora in poi|da adesso in poi|d'ora in avanti|da questo momento"
        ),
        "you": "tu|sei|sarai|devi|rispondi|risponderai",
        "you_are_now": "ora sei|adesso sei|sei ora|ora tu sei|adesso tu sei",
        "without": "senza",
        "any": "alcuna|alcun|alcune|nessuna|nessun",
        "restrictions": (
            "restrizioni|restrizione|filtri|filtro|limiti|limitazioni|censura|regole|vincoli"
        ),
        "reveal": (
            "rivela|rivelami|rivelate|mostra|mostrami|mostrate|stampa|ripeti|dimmi|dammi|svela|"
            "svelami|scrivi|scrivimi|elenca"
        ),
        "me": "mi",
        "det2": "il|il tuo|tuo|le|le tue|tue|i tuoi|lo",
        "system_prompt": (
            "prompt di sistema|prompt del sistema|istruzioni di sistema|istruzioni del sistema|"
            "istruzioni iniziali|istruzioni originali|istruzioni nascoste|istruzioni segrete|"
            "messaggio di sistema|prompt iniziale|prompt nascosto|prompt originale|"
            "istruzioni che ti sono state date|istruzioni che hai ricevuto"
        ),
        "your_prompt": "il tuo prompt|tuo prompt",
        "secrets": (
            "credenziali|password|chiavi api|chiave api|segreti|token|dati interni|"
            "configurazione interna|dati dei clienti|dati clienti|variabili d'ambiente"
        ),
        "send": (
            "invia|inviale|invialo|inviali|inoltra|inoltrale|inoltrali|manda|mandale|mandali|"
            "trasmetti|condividi|spedisci|carica"
        ),
        "sensitive": (
            "dati dei clienti|dati clienti|lista clienti|elenco clienti|elenco dei clienti|"
            "email dei clienti|credenziali|password|chiavi api|segreti|dati personali|dati interni|"
            "cronologia della conversazione|cronologia chat"
        ),
        "note": "nota|messaggio|istruzioni|avviso|promemoria",
        "to": "per l'|per il|per la|per lo|all'|al|alla|per",
        "ai": "ia|ai|intelligenza artificiale|assistente|bot|chatbot|modello|agente|llm",
        "if_ai": (
            "se sei un'ia|se sei un'intelligenza artificiale|se sei un assistente|"
            "se sei un modello|se sei un agente|se sei un bot|se sei un'ai"
        ),
        "system_note": (
            "nota di sistema|nota del sistema|messaggio di sistema|avviso di sistema|"
            "istruzione di sistema|nota dell'amministratore|nota dello sviluppatore"
        ),
        "hide_from_user": (
            "non dirlo all'utente|non dire all'utente|non informare l'utente|"
            "senza informare l'utente|senza dirlo all'utente|senza avvisare l'utente|"
            "non menzionare questa nota|non menzionare queste istruzioni"
        ),
        "reply_end": (
            "alla fine di ogni risposta|alla fine della tua risposta|"
            "alla fine di qualsiasi risposta|alla fine di ciascuna risposta|"
            "in fondo a ogni risposta|in ogni risposta futura|in tutte le risposte future"
        ),
        "memory": (
            "salva nella tua memoria|salvalo nella tua memoria|salva in memoria|"
            "salva questa nota nella tua memoria|memorizza questa nota|memorizza queste istruzioni"
        ),
        "safety": (
            "filtri di sicurezza|controlli di sicurezza|protocolli di sicurezza|"
            "linee guida di sicurezza|restrizioni di sicurezza|misure di sicurezza|"
            "filtri sui contenuti"
        ),
        "disabled": (
            "disattivati|disattivate|disabilitati|disabilitate|rimossi|rimosse|sospesi|sospese|"
            "spenti|revocati|revocate"
        ),
        "disable": "disattiva|disabilita|ignora|salta|aggira|rimuovi",
    },
    "de": {
        "override_verb": (
            "ignoriere|ignorier|ignorieren sie|ignoriert|vergiss|vergessen sie|vergesst|missachte|"
            "missachten sie|verwirf|verwerfen sie|ubergehe|ubergehen sie"
        ),
        "filler": "bitte|einfach|jetzt|nun|sofort",
        "all": "alle|samtliche|jegliche",
        "det": "die|deine|ihre|eure|diese|den|deinen|ihren",
        "earlier": (
            "vorherigen|vorherige|bisherigen|bisherige|obigen|obige|vorigen|vorige|fruheren|"
            "fruhere|ursprunglichen|ursprungliche|alten|alte|vorangegangenen|anfanglichen|"
            "bestehenden"
        ),
        "instructions": (
            "anweisungen|anweisung|regeln|befehle|instruktionen|vorgaben|richtlinien|anordnungen|"
            "direktiven|prompts"
        ),
        "verb_final": "ignorieren|vergessen|missachten|verwerfen",
        "everything_before": (
            "alles bisherige|alles vorherige|alles davor|alles obige|alles oben|"
            "alles, was dir gesagt wurde|alles was dir gesagt wurde|alles, was man dir gesagt hat"
        ),
        "no_longer_apply": (
            "gelten nicht mehr|gilt nicht mehr|sind ungultig|sind aufgehoben|sind nichtig|"
            "sind hinfallig|sind widerrufen|sind veraltet"
        ),
        "new_instructions": (
            "neue anweisungen|neue anweisung|neue regeln|neuer systemprompt|neue befehle|"
            "neue vorgaben"
        ),
        "from_now_on": "ab jetzt|ab sofort|von nun an|von jetzt an|fortan",
        "you": "du|sie|bist|gibst|antwortest|wirst|sollst|musst",
        "you_are_now": (
            "du bist jetzt|du bist nun|du bist ab jetzt|du bist ab sofort|sie sind jetzt|"
            "sie sind nun|bist du jetzt|bist du nun"
        ),
        "without": "ohne",
        "any": "jegliche|irgendwelche|jede|alle",
        "restrictions": (
            "einschrankungen|beschrankungen|filter|regeln|grenzen|zensur|limits|richtlinien"
        ),
        "reveal": (
            "zeig|zeige|zeigen sie|gib|geben sie|nenne|nennen sie|verrate|verraten sie|wiederhole|"
            "wiederholen sie|drucke|offenbare|enthulle|schreib|schreibe|liste"
        ),
        "me": "mir|uns",
        "det2": "dein|deine|deinen|ihr|ihre|ihren|das|den|die",
        "system_prompt": (
            "systemprompt|system-prompt|system prompt|systemanweisungen|systemanweisung|"
            "systemnachricht|system-nachricht|ursprunglichen anweisungen|anfanglichen anweisungen|"
            "versteckten anweisungen|geheimen anweisungen|anweisungen, die du erhalten hast|"
            "anweisungen die du erhalten hast"
        ),
        "your_prompt": "dein prompt|deinen prompt|ihren prompt|ihr prompt",
        "secrets": (
            "zugangsdaten|anmeldedaten|passworter|passwort|kennworter|api-schlussel|api schlussel|"
            "geheimnisse|token|tokens|internen daten|interne daten|interne konfiguration|"
            "internen konfiguration|kundendaten|umgebungsvariablen"
        ),
        "reveal_after": "preis|aus|bekannt",
        "send": "sende|schicke|schick|leite|ubermittle|ubertrage|teile|lade|maile|versende",
        "sensitive": (
            "kundendaten|kundenliste|kunden-e-mails|zugangsdaten|anmeldedaten|passworter|"
            "kennworter|api-schlussel|geheimnisse|personliche daten|personenbezogene daten|"
            "internen daten|interne daten|gesprachsverlauf|chatverlauf"
        ),
        "note": "hinweis|nachricht|notiz|anweisung|anweisungen|mitteilung",
        "to": "an die|an den|an das|fur die|fur den|fur das|an|fur",
        "ai": "ki|ai|bot|chatbot|assistent|assistenten|modell|sprachmodell|agent|agenten|llm",
        "if_ai": (
            "wenn du eine ki bist|falls du eine ki bist|wenn du ein ki-assistent bist|"
            "wenn du ein sprachmodell bist|falls du ein sprachmodell bist|"
            "wenn du ein assistent bist|wenn du ein ki-modell bist|wenn sie eine ki sind|"
            "falls sie eine ki sind|wenn du ein bot bist"
        ),
        "system_note": (
            "systemhinweis|systemnachricht|systemmeldung|systemanweisung|hinweis des systems|"
            "nachricht vom system|administratorhinweis|admin-hinweis|entwicklerhinweis"
        ),
        "hide_from_user": (
            "sag es dem benutzer nicht|sage es dem benutzer nicht|sag es dem nutzer nicht|"
            "sag dem benutzer nichts|sag dem nutzer nichts|ohne den benutzer zu informieren|"
            "ohne den nutzer zu informieren|ohne es dem benutzer zu sagen|"
            "ohne es dem nutzer zu sagen|erwahne diesen hinweis nicht|"
            "erwahne diese anweisung nicht|informiere den benutzer nicht|"
            "informiere den nutzer nicht"
        ),
        "reply_end": (
            "am ende jeder antwort|am ende deiner antwort|am ende ihrer antwort|"
            "am ende jeder deiner antworten|am schluss jeder antwort|in jeder zukunftigen antwort|"
            "in allen zukunftigen antworten"
        ),
        "memory": (
            "speichere dies in deinem gedachtnis|speichere das in deinem gedachtnis|"
            "in deinem gedachtnis speichern|in deinem speicher ablegen|speichere diese notiz|"
            "speichere dies dauerhaft"
        ),
        "safety": (
            "sicherheitsfilter|sicherheitsprufungen|sicherheitsrichtlinien|sicherheitsregeln|"
            "sicherheitsprotokolle|sicherheitsmassnahmen|sicherheitsvorkehrungen|sicherheitschecks|"
            "inhaltsfilter"
        ),
        "disabled": "deaktiviert|aufgehoben|entfernt|ausgeschaltet|abgeschaltet|ausgesetzt",
        "disable": "deaktiviere|deaktivieren sie|ignoriere|umgehe|uberspringe|entferne",
    },
    "fr": {
        "override_verb": (
            "ignore|ignorez|ignorer|oublie|oubliez|oublier|ne tiens pas compte de|"
            "ne tenez pas compte de|ne tiens pas compte des|ne tenez pas compte des|"
            "fais abstraction de|faites abstraction de|fais abstraction des|faites abstraction des|"
            "laisse de cote|laissez de cote|neglige|negligez"
        ),
        "filler": "maintenant|simplement|donc|s'il te plait|s'il vous plait",
        "all": "toutes|tous",
        "det": "les|tes|vos|ces",
        "earlier": (
            "precedentes|precedents|anterieures|anterieurs|ci-dessus|initiales|initiaux|d'origine|"
            "originales|originaux|du systeme|systeme|prealables|anciennes|anciens|qui precedent"
        ),
        "instructions": (
            "instructions|instruction|regles|consignes|directives|ordres|commandes|indications|"
            "prompts|contraintes"
        ),
        "everything_before": (
            "tout ce qui precede|tout ce qu'on t'a dit|tout ce que l'on t'a dit|"
            "tout ce qui a ete dit avant|tout ce qui est ci-dessus"
        ),
        "no_longer_apply": (
            "ne s'appliquent plus|ne sont plus valables|ne sont plus valides|sont annulees|"
            "sont revoquees|sont obsoletes|sont caduques|ne comptent plus"
        ),
        "new_instructions": (
            "nouvelles instructions|nouvelle instruction|nouvelles consignes|nouvelles regles|"
            "nouveau prompt systeme|nouvelles directives"
        ),
        "from_now_on": "desormais|a partir de maintenant|dorenavant|des maintenant",
        "you": "tu|vous",
        "you_are_now": (
            "tu es maintenant|tu es desormais|tu es dorenavant|vous etes maintenant|"
            "vous etes desormais|vous etes dorenavant"
        ),
        "without": "sans",
        "any": "aucune|aucun",
        "restrictions": (
            "restrictions|restriction|filtres|filtre|limites|limite|censure|regles|contraintes|"
            "limitations"
        ),
        "reveal": (
            "revele|revelez|montre|montrez|affiche|affichez|donne|donnez|repete|repetez|imprime|"
            "imprimez|dis|dites|ecris|ecrivez|recite|recitez|divulgue|divulguez"
        ),
        "me": "moi|nous",
        "det2": "ton|ta|tes|votre|vos|le|la|les",
        "system_prompt": (
            "prompt systeme|prompt du systeme|prompt de systeme|instructions systeme|"
            "instructions du systeme|instructions initiales|instructions d'origine|"
            "instructions originales|instructions cachees|instructions secretes|message systeme|"
            "message du systeme|consignes systeme|consignes initiales|prompt initial|prompt cache|"
            "instructions qu'on t'a donnees|instructions que tu as recues"
        ),
        "your_prompt": "ton prompt|votre prompt",
        "secrets": (
            "identifiants|mots de passe|mot de passe|cles api|cles d'api|cle api|secrets|jetons|"
            "donnees internes|configuration interne|donnees clients|donnees des clients|"
            "variables d'environnement"
        ),
        "send": (
            "envoie|envoyez|envoyer|transmets|transmettez|transfere|transferez|partage|partagez|"
            "expedie|expediez|televerse|televersez|poste|postez"
        ),
        "sensitive": (
            "donnees clients|donnees des clients|donnees client|liste des clients|liste de clients|"
            "fichier clients|e-mails des clients|identifiants|mots de passe|cles api|cles d'api|"
            "secrets|jetons|donnees personnelles|donnees internes|historique de la conversation|"
            "historique du chat"
        ),
        "note": "note|message|instructions|consigne|avis|remarque",
        "to": "pour l'|pour le|pour la|a l'|au|a la|pour",
        "ai": "ia|ai|intelligence artificielle|assistant|bot|chatbot|modele|agent|llm|robot",
        "if_ai": (
            "si tu es une ia|si vous etes une ia|si tu es un assistant|si vous etes un assistant|"
            "si tu es un modele|si vous etes un modele|si tu es un agent|si vous etes un agent|"
            "si tu es une intelligence artificielle|si tu es un bot|si tu es un robot"
        ),
        "system_note": (
            "note systeme|note du systeme|message systeme|message du systeme|avis systeme|"
            "instruction systeme|note de l'administrateur|note du developpeur"
        ),
        "hide_from_user": (
            "ne le dis pas a l'utilisateur|ne dis pas a l'utilisateur|"
            "ne le dites pas a l'utilisateur|sans informer l'utilisateur|"
            "sans le dire a l'utilisateur|sans prevenir l'utilisateur|"
            "n'en parle pas a l'utilisateur|ne mentionne pas cette note|"
            "ne mentionnez pas cette note|ne mentionne pas ces instructions|"
            "n'informe pas l'utilisateur"
        ),
        "reply_end": (
            "a la fin de chaque reponse|a la fin de toute reponse|a la fin de ta reponse|"
            "a la fin de votre reponse|a la fin de toutes tes reponses|"
            "a la fin de chacune de tes reponses|dans chaque reponse future|"
            "dans toutes les reponses futures"
        ),
        "memory": (
            "enregistre dans ta memoire|enregistre cette note dans ta memoire|"
            "sauvegarde dans ta memoire|sauvegarde cette note|memorise cette note|"
            "memorise ces instructions|ajoute a ta memoire"
        ),
        "safety": (
            "filtres de securite|controles de securite|protocoles de securite|regles de securite|"
            "consignes de securite|mesures de securite|garde-fous|filtres de contenu"
        ),
        "disabled": (
            "desactives|desactivees|desactive|desactivee|supprimes|supprimees|leves|levees|"
            "suspendus|suspendues|coupes|coupees"
        ),
        "disable": "desactive|desactivez|ignore|ignorez|contourne|contournez|supprime|supprimez",
    },
    "es": {
        "override_verb": (
            "ignora|ignore|ignoren|ignorar|olvida|olvide|olviden|olvidar|descarta|descarte|omite|"
            "omita|haz caso omiso de|haga caso omiso de|haz caso omiso a|no hagas caso de|"
            "no hagas caso a|desatiende|pasa por alto|pase por alto"
        ),
        "filler": "por favor|ahora|simplemente",
        "all": "todas|todos",
        "det": "las|los|tus|sus|estas|esas",
        "earlier": (
            "anteriores|previas|previos|de arriba|iniciales|originales|del sistema|de sistema|"
            "antiguas|antiguos|precedentes|que te dieron|que recibiste"
        ),
        "instructions": (
            "instrucciones|instruccion|reglas|indicaciones|directrices|directivas|ordenes|comandos|"
            "normas|prompts"
        ),
        "everything_before": (
            "todo lo anterior|todo lo que te dijeron|todo lo que se te dijo|todo lo de arriba|"
            "todo lo que precede"
        ),
        "no_longer_apply": (
            "ya no se aplican|ya no aplican|ya no son validas|ya no son validos|ya no valen|"
            "quedan anuladas|estan anuladas|quedan revocadas|son obsoletas|han sido revocadas"
        ),
        "new_instructions": (
            "nuevas instrucciones|nueva instruccion|nuevas reglas|nuevo prompt del sistema|"
            "nuevas directrices|nuevas ordenes"
        ),
        "from_now_on": (
            "a partir de ahora|de ahora en adelante|desde ahora|a partir de este momento|"
            "desde este momento"
        ),
        "you": "tu|eres|seras|debes|responderas|respondes|usted",
        "you_are_now": "ahora eres|ahora tu eres|eres ahora|ahora es usted|ahora seras",
        "without": "sin",
        "any": "ninguna|ningun|ningunas",
        "restrictions": (
            "restricciones|restriccion|filtros|filtro|limites|limite|censura|reglas|limitaciones|"
            "normas"
        ),
        "reveal": (
            "revela|revele|revelame|muestra|muestre|muestrame|muestreme|dime|digame|dame|deme|"
            "repite|repita|imprime|imprima|escribe|escriba|ensename|divulga|enumera"
        ),
        "me": "me",
        "det2": "tu|tus|su|sus|el|la|las|los",
        "system_prompt": (
            "prompt del sistema|prompt de sistema|instrucciones del sistema|"
            "instrucciones de sistema|instrucciones iniciales|instrucciones originales|"
            "instrucciones ocultas|instrucciones secretas|mensaje del sistema|mensaje de sistema|"
            "prompt inicial|prompt oculto|prompt original|instrucciones que te dieron|"
            "instrucciones que recibiste"
        ),
        "your_prompt": "tu prompt|su prompt",
        "secrets": (
            "credenciales|contrasenas|contrasena|claves api|claves de api|clave api|secretos|"
            "tokens|datos internos|configuracion interna|datos de clientes|datos de los clientes|"
            "variables de entorno"
        ),
        "send": (
            "envia|envie|enviar|envialos|envialas|enviala|envialo|reenvia|reenvie|manda|mande|"
            "mandalos|transmite|transmita|comparte|comparta|sube|suba|publica"
        ),
        "sensitive": (
            "datos de clientes|datos de los clientes|datos del cliente|lista de clientes|"
            "listado de clientes|correos de los clientes|correos electronicos de los clientes|"
            "credenciales|contrasenas|claves api|claves de api|secretos|datos personales|"
            "datos internos|historial de la conversacion|historial del chat"
        ),
        "note": "nota|mensaje|instrucciones|aviso|indicacion",
        "to": "para la|para el|a la|al|para",
        "ai": "ia|ai|inteligencia artificial|asistente|bot|chatbot|modelo|agente|llm",
        "if_ai": (
            "si eres una ia|si eres un asistente|si eres un modelo|si eres un agente|"
            "si eres una inteligencia artificial|si usted es una ia|si eres un bot|"
            "si es usted una ia"
        ),
        "system_note": (
            "nota del sistema|nota de sistema|mensaje del sistema|mensaje de sistema|"
            "aviso del sistema|instruccion del sistema|nota del administrador|"
            "nota del desarrollador"
        ),
        "hide_from_user": (
            "no se lo digas al usuario|no le digas al usuario|no le digas nada al usuario|"
            "sin informar al usuario|sin decirle al usuario|sin avisar al usuario|"
            "no menciones esta nota|no menciones estas instrucciones|no informes al usuario"
        ),
        "reply_end": (
            "al final de cada respuesta|al final de cualquier respuesta|al final de tu respuesta|"
            "al final de su respuesta|al final de todas tus respuestas|en cada respuesta futura|"
            "en todas las respuestas futuras"
        ),
        "memory": (
            "guarda en tu memoria|guardalo en tu memoria|guarda esta nota en tu memoria|"
            "almacena en tu memoria|memoriza esta nota|memoriza estas instrucciones"
        ),
        "safety": (
            "filtros de seguridad|controles de seguridad|protocolos de seguridad|"
            "reglas de seguridad|normas de seguridad|medidas de seguridad|filtros de contenido"
        ),
        "disabled": (
            "desactivados|desactivadas|eliminados|eliminadas|suspendidos|suspendidas|apagados|"
            "apagadas|anulados|anuladas"
        ),
        "disable": "desactiva|desactive|ignora|ignore|omite|omita|salta|elude|quita",
    },
}

# (signal, weight, gate fields, template): `{field}` is an alternation of that field's phrases;
# a template whose fields a language lacks is skipped for it. The gate fields' phrases cover
# every alternative of the template, so their longest words are valid triggers.
TEMPLATES: tuple[tuple[str, float, tuple[str, ...], str], ...] = (
    ("instruction_override", 0.8, ("override_verb",),
     r"\b{override_verb}(?:\s+{filler})?\s+(?:{all}\s+)?(?:{det}\s+)?"
     r"(?:(?:{earlier}\s+)+{instructions}|{instructions}(?:\s+{earlier})+)\b"),
    ("instruction_override", 0.6, ("override_verb",),
     r"\b{override_verb}(?:\s+{filler})?\s+{all}\s+(?:{det}\s+)?{instructions}\b"),
    ("instruction_override", 0.7, ("override_verb",),
     r"\b{override_verb}(?:\s+{filler})?\s+{everything_before}"),
    ("instruction_override", 0.7, ("no_longer_apply",),
     r"\b(?:{earlier}\s+{instructions}|{instructions}\s+{earlier})\s+(?:\S+\s+){{0,2}}?"
     r"{no_longer_apply}"),
    ("instruction_override", 0.7, ("verb_final",),
     r"\b(?:{earlier}\s+)+{instructions}\s+(?:\S+\s+){{0,2}}?{verb_final}\b"),
    ("new_instructions", 0.6, ("new_instructions",), r"\b{new_instructions}\s*:"),
    ("from_now_on", 0.3, ("from_now_on", "you_are_now"),
     r"\b{from_now_on},?\s+(?:\S+\s+){{0,2}}?{you}\b|\b{you_are_now}\b"),
    ("restriction_removal", 0.35, ("without",), r"\b{without}\s+(?:{any}\s+)?{restrictions}\b"),
    ("prompt_exfiltration", 0.75, ("reveal",),
     r"\b{reveal}(?:[\s-]+{me})?\s+(?:{det2}\s+)?{system_prompt}\b"
     r"|\b{reveal}(?:[\s-]+{me})?\s+{your_prompt}\b"),
    ("secret_disclosure", 0.25, ("reveal",),
     r"\b{reveal}(?:[\s-]+{me})?\s+(?:\S+\s+){{0,2}}?{secrets}\b"),
    ("secret_disclosure", 0.25, ("reveal_after",),
     r"\b{secrets}\s+(?:\S+\s+)?{reveal_after}\b"),
    ("ai_addressee", 0.5, ("ai",), r"\b{note}\s+{to}(?:\s+|(?<='))\s*{ai}(?:\s+\S+){{0,3}}?\s*:"),
    ("ai_addressee", 0.4, ("ai", "if_ai"),
     r"\b{note}\s+{to}(?:\s+|(?<='))\s*{ai}\b|\b{if_ai}\b"),
    ("fake_authority", 0.35, ("system_note",), r"\b{system_note}\s*:"),
    ("covert_action", 0.4, ("hide_from_user",), r"\b{hide_from_user}\b"),
    ("reply_injection", 0.25, ("reply_end",), r"\b{reply_end}\b"),
    ("memory_persistence", 0.25, ("memory",), r"\b{memory}\b"),
    ("safety_disabled", 0.25, ("safety",),
     r"\b{safety}\s+(?:\S+\s+){{0,2}}?{disabled}\b|\b{disable}\s+(?:\S+\s+){{0,2}}?{safety}\b"),
)  # fmt: skip
